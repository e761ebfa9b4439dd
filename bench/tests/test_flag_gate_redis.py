"""The report's flag gate against real Redis (the session's own redis-server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis.asyncio import Redis
from tests.support.fakes import FakeCoupons

from couponrush.domain.model import Coupon, CouponStatus, GateSnapshot, RejectReason
from couponrush.service.ports import GateState
from couponrush_bench.report.gate import FlagGate, RedisFlags

NOW = datetime.now(UTC)


def coupon(*, quantity: int = 3, expires_in: timedelta = timedelta(hours=1)) -> Coupon:
    return Coupon(1, "c", Decimal("0.1"), quantity, 0, CouponStatus.PUBLISHABLE, NOW + expires_in)


def flag_gate(redis: Redis) -> FlagGate:
    return FlagGate(RedisFlags(redis), FakeCoupons())  # a database that knows no coupon


async def test_the_flag_gate_admits_while_the_flag_is_true_and_says_why_when_false(redis: Redis) -> None:
    gate = flag_gate(redis)
    assert (await gate.admit(1, 7, "r", NOW)).state is GateState.MISSING
    await gate.open(coupon(), NOW, created=True)
    assert await redis.get("coupon:available:1") == b"true"
    assert (await gate.admit(1, 7, "r", NOW)).state is GateState.ADMITTED
    assert (await gate.admit(1, 7, "r2", NOW)).state is GateState.ADMITTED  # no memory of users
    await gate.close(1, RejectReason.SOLD_OUT)
    verdict = await gate.admit(1, 8, "s", NOW)
    assert (verdict.state, verdict.reason) == (GateState.CLOSED, RejectReason.SOLD_OUT)


async def test_the_flag_gate_never_reopens_what_a_worker_closed(redis: Redis) -> None:
    gate = flag_gate(redis)
    await gate.close(1, RejectReason.SOLD_OUT)
    await gate.finish_rebuild(1, "", GateSnapshot(coupon(), {}), NOW)
    assert await redis.get("coupon:available:1") == b"false"
