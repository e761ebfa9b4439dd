"""Figures from a load run and from the database it left behind."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from couponrush.bench.loadgen import LoadRun


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
    }


@dataclass(frozen=True, slots=True)
class Settled:
    issued_users: list[int]
    decisions: Counter[tuple[str, str | None]]
    time_to_issue_s: list[float]
    first_issued_at: datetime | None
    last_issued_at: datetime | None
    issued_at: list[datetime]


async def settled(conn: asyncpg.Connection, coupon_id: int) -> Settled:
    rows = await conn.fetch(
        "SELECT uc.user_id, uc.issued_at, r.requested_at FROM user_coupons uc"
        " JOIN coupon_requests r ON r.request_id = uc.request_id WHERE uc.coupon_id = $1 ORDER BY uc.issued_at",
        coupon_id,
    )
    decisions = await conn.fetch(
        "SELECT status, reason, count(*) AS n FROM coupon_requests WHERE coupon_id = $1 GROUP BY 1, 2", coupon_id
    )
    issued_at = [r["issued_at"] for r in rows]
    return Settled(
        issued_users=[r["user_id"] for r in rows],
        decisions=Counter({(d["status"], d["reason"]): d["n"] for d in decisions}),
        time_to_issue_s=[(r["issued_at"] - r["requested_at"]).total_seconds() for r in rows],
        first_issued_at=issued_at[0] if issued_at else None,
        last_issued_at=issued_at[-1] if issued_at else None,
        issued_at=issued_at,
    )


def invariants(run: LoadRun, outcome: Settled, quantity: int, *, reserving: bool) -> dict[str, object]:
    """What must hold after a drop; with a reserving gate, also: told OK = issued."""
    told_ok = [r.user_id for r in run.results if r.status == 200]
    issued = outcome.issued_users
    demand = len({r.user_id for r in run.results})
    checks: dict[str, object] = {
        "issued": len(issued),
        "quantity": quantity,
        "issued_within_quantity": len(issued) <= quantity,
        "issued_equals_quantity_when_demand_exceeds_it": demand < quantity or len(issued) == quantity,
        "no_duplicates": len(issued) == len(set(issued)),
        "told_ok": len(told_ok),
        "over_accepted": len(told_ok) - len(issued),
        "every_issued_user_was_told_ok": set(issued) <= set(told_ok),
    }
    if reserving:
        checks["told_ok_equals_issued"] = sorted(told_ok) == sorted(issued)
    return checks


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
