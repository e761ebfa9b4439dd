"""The report's flag-only gate against ours, on the same drop, in one run: told OK minus issued.

The flag side is the report's design as the bench rebuilds it (``couponrush_bench.report``: its API and
worker processes, the product's relay); the reserving side is couponrush as it ships.

Prints the figures and writes them to ``$COUPONRUSH_RESULTS_DIR/over_acceptance.json`` when set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
from tests.support.drop import crowd, run_drop

from couponrush_bench.harness import Sandbox, create_coupon
from couponrush_bench.invariants import settle
from couponrush_bench.report import commands as report_commands

QUANTITY, USERS, REQUESTS, CONCURRENCY = 100, 2000, 5000, 200


async def measure(sandbox: Sandbox, admission: str) -> dict[str, int | str]:
    system = await sandbox.start_system(
        f"over-{admission}", commands=report_commands() if admission == "flag" else None
    )
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, quantity=QUANTITY)
        answers = await run_drop(
            [system.base_url], coupon_id, crowd(USERS, REQUESTS, first_user=50_000), concurrency=CONCURRENCY
        )
        holders = (await settle(system.database_url, coupon_id)).holders
    finally:
        codes = await sandbox.stop_system(system)
    assert set(codes.values()) == {0}, codes
    told_ok = sum(1 for a in answers if a.status == 200)
    return {
        "admission": admission,
        "requests": len(answers),
        "told_ok": told_ok,
        "issued": len(holders),
        "over_acceptance": told_ok - len(holders),
    }


def write_report(folder: Path, report: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "over_acceptance.json").write_text(json.dumps(report, indent=2) + "\n")


async def test_the_flag_gate_over_accepts_and_the_reserving_gate_does_not(sandbox: Sandbox) -> None:
    flag = await measure(sandbox, "flag")
    reserve = await measure(sandbox, "reserve")
    report = {
        "drop": {"quantity": QUANTITY, "users": USERS, "requests": REQUESTS, "concurrency": CONCURRENCY},
        "flag": flag,
        "reserve": reserve,
    }
    print("\nover-acceptance:", json.dumps(report))
    if results := os.environ.get("COUPONRUSH_RESULTS_DIR"):
        write_report(Path(results), report)

    assert (reserve["told_ok"], reserve["issued"], reserve["over_acceptance"]) == (QUANTITY, QUANTITY, 0)
    assert flag["issued"] == QUANTITY
    assert int(flag["over_acceptance"]) > 0  # the problem the reserving gate removes
