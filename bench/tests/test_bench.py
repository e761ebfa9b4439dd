"""The benchmark command itself: it runs a scenario end to end and reports figures and invariants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.fixtures import DATABASES, TEST_PG_BASE

from couponrush_bench.harness import ADMIN_TOKEN, System


def test_the_suite_measures_a_small_drop_and_the_hot_coupon_on_fresh_systems(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "couponrush_bench",
            "suite",
            "--scenarios",
            "accept,hot-issue",
            "--variants",
            "couponrush,report",
            "--runs",
            "1",
            "--accept-requests",
            "400",
            "--hot-requests",
            "300",
            "--warmup-requests",
            "100",
            "--api-workers",
            "1",
            "--out",
            str(out),
            "--postgres",
            TEST_PG_BASE,
            # The suite names its databases with this and an id of its own, and drops them when it ends.
            "--db-prefix",
            DATABASES.prefix + "bench_",
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    results = json.loads((out / "results.json").read_text())
    [accept] = results["scenarios"]["accept"]["couponrush"]["runs"]
    assert accept["http"]["accepted"] == 400
    assert accept["invariants"]["told_ok_equals_issued"] is True
    assert accept["invariants"]["no_duplicates"] is True
    assert accept["time_to_issue_ms"]["p99"] > 0
    [hot] = results["scenarios"]["hot-issue"]["couponrush"]["runs"]
    assert (hot["issued"], hot["no_duplicates"]) == (300, True)
    assert hot["issued_per_s"] > 0
    assert "| couponrush | 1 |" in (out / "summary.md").read_text()
    assert (out / "accept.png").stat().st_size > 0
    # The report's design, rebuilt in the bench: every request accepted (the flag gate reserves nothing)
    # and issued, one record per transaction.
    [report_accept] = results["scenarios"]["accept"]["report"]["runs"]
    assert report_accept["http"]["accepted"] == 400
    assert report_accept["invariants"]["issued"] == 400
    assert report_accept["invariants"]["every_issued_user_was_told_ok"] is True
    assert "told_ok_equals_issued" not in report_accept["invariants"]
    [report_hot] = results["scenarios"]["hot-issue"]["report"]["runs"]
    assert (report_hot["issued"], report_hot["no_duplicates"]) == (300, True)
    assert "| report | 1 |" in (out / "summary.md").read_text()


def test_a_drop_against_the_running_system_reports_its_invariants(system: System, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "couponrush_bench",
            "drop",
            "--url",
            system.base_url,
            "-n",
            "600",
            "-u",
            "300",
            "-q",
            "50",
            "-c",
            "32",
            "--out",
            str(tmp_path),
        ],
        env={**system.env, "COUPONRUSH_ADMIN_TOKEN": ADMIN_TOKEN},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    [written] = list(tmp_path.glob("drop-*.json"))
    figures = json.loads(written.read_text())
    assert figures["http"]["requests"] == 600
    assert figures["invariants"]["issued"] == 50
    assert figures["invariants"]["told_ok_equals_issued"] is True
    assert os.path.basename(written) == f"drop-{figures['coupon_id']}.json"
