"""What must hold after a drop with the reserving gate: OK means you got it."""

from __future__ import annotations

from collections import Counter

from redis.asyncio import Redis

from couponrush.adapters.gate import gate_key, holders_key
from tests.support.drop import Answer
from tests.support.polling import eventually
from tests.support.system import RunningSystem


async def settled_totals(system: RunningSystem, coupon_id: int) -> tuple[list[int], Counter[tuple[str, str | None]]]:
    """Wait until every accepted request is decided; return the holders and the decisions."""
    conn = await system.db()
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) FROM coupon_requests WHERE coupon_id = $1 AND status = 'PENDING'", coupon_id
            ),
            lambda pending: pending == 0,
            timeout=90,
            what="every accepted request decided",
        )
        holders = [
            r["user_id"] for r in await conn.fetch("SELECT user_id FROM user_coupons WHERE coupon_id = $1", coupon_id)
        ]
        rows = await conn.fetch(
            "SELECT status, reason, count(*) AS n FROM coupon_requests WHERE coupon_id = $1 GROUP BY 1, 2", coupon_id
        )
    finally:
        await conn.close()
    return holders, Counter({(r["status"], r["reason"]): r["n"] for r in rows})


async def assert_ok_means_issued(system: RunningSystem, coupon_id: int, answers: list[Answer], quantity: int) -> None:
    told_ok = [a.user_id for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]

    assert len(told_ok) == quantity, Counter((a.status, a.reason) for a in answers)
    assert len(set(told_ok)) == quantity  # nobody told OK twice
    assert {(a.status, a.reason) for a in refused} <= {(409, "SOLD_OUT"), (409, "ALREADY_REQUESTED")}, Counter(
        (a.status, a.reason) for a in refused
    )
    # A refused user who was never told OK got SOLD_OUT or ALREADY_REQUESTED, never silence.
    assert all(a.reason for a in refused)

    holders, decisions = await settled_totals(system, coupon_id)
    assert sorted(holders) == sorted(told_ok)  # exactly those told OK hold it, nobody else
    assert decisions == Counter({("ISSUED", None): quantity})  # nothing accepted was refused later

    redis: Redis = system.redis()
    try:
        assert await redis.hget(gate_key(coupon_id), "stock") == b"0"  # type: ignore[misc]
        in_gate = await redis.hkeys(holders_key(coupon_id))  # type: ignore[misc]
        assert sorted(int(u) for u in in_gate) == sorted(told_ok)
        assert await redis.get(f"coupon:available:{coupon_id}") == b"false"
    finally:
        await redis.aclose()
