"""Figures from a load run, and the CPU each part of the system under test spent."""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from couponrush_bench.harness import System
from couponrush_bench.loadgen import LoadRun


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def latency_summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values_s, 50) * 1000, 2),
        "p95": round(percentile(values_s, 95) * 1000, 2),
        "p99": round(percentile(values_s, 99) * 1000, 2),
        "max": round(max(values_s, default=0.0) * 1000, 2),
    }


def http_figures(run: LoadRun) -> dict[str, object]:
    accepted = [r for r in run.results if r.status == 200]
    outcomes = Counter(f"{r.status} {r.reason}" if r.reason else str(r.status) for r in run.results)
    return {
        "requests": len(run.results),
        "connection_errors": run.errors,
        "duration_s": round(run.duration, 3),
        "req_per_s": round(len(run.results) / run.duration, 1),
        "accepted": len(accepted),
        "accepted_per_s": round(len(accepted) / run.duration, 1),
        "refused_per_s": round((len(run.results) - len(accepted)) / run.duration, 1),
        "outcomes": dict(outcomes.most_common()),
        "latency_ms": latency_summary_ms([r.done - r.due for r in run.results]),
        "accepted_latency_ms": latency_summary_ms([r.done - r.due for r in accepted]),
        # The load generator shares the cores: its CPU seconds, and the share of one core it used.
        "generator_cpu_s": round(run.cpu_s, 3),
        "generator_core_share": round(run.cpu_s / run.duration, 3),
        "generator_cpu_us_per_request": round(run.cpu_s / max(len(run.results), 1) * 1e6, 1),
    }


def median_of(runs: Sequence[dict[str, object]], *path: str) -> float:
    values: list[float] = []
    for run in runs:
        node: object = run
        for key in path:
            assert isinstance(node, dict)
            node = node[key]
        assert isinstance(node, int | float)
        values.append(float(node))
    return statistics.median(values)


_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds used so far) for every process we can read."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[1] is the parent pid; fields[11], fields[12] are utime, stime (in clock ticks).
        table[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def _tree_cpu(table: dict[int, tuple[int, str, float]], root: int) -> float:
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][2]
            stack.extend(child for child, (parent, _, _) in table.items() if parent == pid)
    return total


def cpu_snapshot(system: System) -> dict[str, float]:
    """CPU seconds used so far by each part of the system under test, and by this process (the generator).

    Taken before and after a load, the differences say which stage spent the shared cores. The broker and
    Redis are the system's own; PostgreSQL is the machine's shared server: all its processes are counted
    (the bench assumes it is alone on it).
    """
    table = _proc_table()
    result = {role: _tree_cpu(table, process.pid) for role, process in system.processes.items()}
    if system.broker.pid is not None:
        result["broker"] = _tree_cpu(table, system.broker.pid)
    if system.redis_server is not None and system.redis_server.pid is not None:
        result["redis"] = _tree_cpu(table, system.redis_server.pid)
    result["postgres"] = sum(cpu for _, name, cpu in table.values() if name == "postgres")
    result["generator"] = table.get(os.getpid(), (0, "", 0.0))[2]
    return result
