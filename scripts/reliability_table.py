#!/usr/bin/env python3
"""Print RELIABILITY.md's table, scenario x phase, from the chaos suite's results (.couponrush/chaos-results.jsonl).

python3 scripts/reliability_table.py                 # the latest pytest session that recorded phases
python3 scripts/reliability_table.py --session ID    # one session (its id is in every result line)
python3 scripts/reliability_table.py --all           # every session with phases
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

PHASES = ("claiming", "sellout", "refusing")


def seconds(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default=".couponrush/chaos-results.jsonl")
    parser.add_argument("--session")
    parser.add_argument("--all", action="store_true")
    args = parser.parse_args()
    results = [json.loads(line) for line in Path(args.path).read_text().splitlines() if line.strip()]
    results = [r for r in results if "phase" in r]  # older lines (before the phases) have none
    if not args.all:
        session = args.session or results[-1]["session"]
        results = [r for r in results if r["session"] == session]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    order: list[str] = []
    for result in results:
        if result["scenario"] not in order:
            order.append(result["scenario"])
        rows[(result["scenario"], result["phase"])].append(result)

    sessions = sorted({r["session"] for r in results})
    print(f"Sessions: {', '.join(sessions)}; {len(results)} runs, {results[0]['at']} to {results[-1]['at']}.\n")
    print(
        "| scenario | phase | runs | violations | recovery s (min / median / max) | fresh request issued s (max) "
        "| fault → repaired s (max) | seeds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scenario in order:
        for phase in PHASES:
            runs = rows.get((scenario, phase))
            if not runs:
                continue
            failed = [sorted(k for k, held in r["invariants"].items() if not held) for r in runs]
            violated = [f for f in failed if f]
            violations = str(len(violated)) + (f" ({'; '.join(', '.join(f) for f in violated)})" if violated else "")
            recoveries = [float(r["recovery_s"]) for r in runs if r["recovery_s"] is not None]
            never = len(runs) - len(recoveries)
            recovery = seconds(recoveries) + (f", {never} never" if never else "")
            fresh = [r["fresh_issued_s"] for r in runs]
            fresh_text = "never" if None in fresh else f"{max(fresh):.1f}"
            outage = max(float(r["outage_s"]) for r in runs)
            seeds = ", ".join(str(r["seed"]) for r in runs)
            print(
                f"| {scenario} | {phase} | {len(runs)} | {violations} | {recovery} | {fresh_text} "
                f"| {outage:.1f} | {seeds} |"
            )


if __name__ == "__main__":
    main()
