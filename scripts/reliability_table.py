#!/usr/bin/env python3
"""Print the RELIABILITY.md table from the chaos suite's results (.couponrush/chaos-results.jsonl)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else ".couponrush/chaos-results.jsonl")
runs: dict[str, list[dict[str, object]]] = defaultdict(list)
for line in path.read_text().splitlines():
    run = json.loads(line)
    runs[str(run["scenario"])].append(run)

print(
    "| scenario | runs | requests / users / quantity per run | faults injected (per run) | invariants "
    "| told OK / issued | recovery: fault → all accepted so far issued | fault → first request accepted "
    "| fault → whole drop settled |"
)
print("|---|---|---|---|---|---|---|---|---|")
for scenario, results in sorted(runs.items()):
    held = sum(all(r["invariants"].values()) for r in results)  # type: ignore[attr-defined]
    failed = sorted({k for r in results for k, v in r["invariants"].items() if not v})  # type: ignore[attr-defined]
    last = results[-1]
    recovery = ", ".join(f"{r['recovery_s']} s" for r in results)
    settled = ", ".join(f"{r.get('settled_s', '?')} s" for r in results)
    admitting = ", ".join(f"{r['admitting_again_s']} s" for r in results if r.get("admitting_again_s") is not None)
    ok_issued = ", ".join(f"{r['told_ok']}/{r['issued']}" for r in results)
    print(
        f"| {scenario} | {len(results)} | {last['requests']} / {last['users']} / {last['quantity']} "
        f"| {'; '.join(last['faults'])} "  # type: ignore[arg-type]
        f"| {held}/{len(results)} runs: all {len(last['invariants'])} held"  # type: ignore[arg-type]
        + (f" (failed: {', '.join(failed)})" if failed else "")
        + f" | {ok_issued} | {recovery} | {admitting} | {settled} |"
    )
