"""The report's Redis gate against real Redis: coupon:available:{couponId} and its companions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis.asyncio import Redis

from couponrush.adapters.gate import RedisFlagGate
from couponrush.domain.model import Coupon, CouponStatus, RejectReason
from couponrush.service.ports import GateState

NOW = datetime.now(UTC)


def coupon(*, issued: int = 0, expires_in: timedelta = timedelta(hours=1)) -> Coupon:
    return Coupon(1, "c", Decimal("0.1"), 3, issued, CouponStatus.PUBLISHABLE, NOW + expires_in)


async def test_an_open_coupon_sets_the_reports_flag_true(redis: Redis) -> None:
    gate = RedisFlagGate(redis)
    await gate.sync(coupon(), NOW)
    assert await redis.get("coupon:available:1") == b"true"
    assert (await gate.check(1, NOW)).state is GateState.OPEN


async def test_a_coupon_never_opened_is_missing_not_closed(redis: Redis) -> None:
    assert (await RedisFlagGate(redis).check(1, NOW)).state is GateState.MISSING


async def test_closing_sets_the_flag_false_and_remembers_why(redis: Redis) -> None:
    gate = RedisFlagGate(redis)
    await gate.sync(coupon(), NOW)
    await gate.close(1, RejectReason.SOLD_OUT)
    assert await redis.get("coupon:available:1") == b"false"
    verdict = await gate.check(1, NOW)
    assert (verdict.state, verdict.reason) == (GateState.CLOSED, RejectReason.SOLD_OUT)


async def test_a_sold_out_coupon_syncs_closed(redis: Redis) -> None:
    gate = RedisFlagGate(redis)
    await gate.sync(coupon(issued=3), NOW)
    verdict = await gate.check(1, NOW)
    assert (verdict.state, verdict.reason) == (GateState.CLOSED, RejectReason.SOLD_OUT)


async def test_expiry_closes_the_gate_without_anyone_turning_it_off(redis: Redis) -> None:
    gate = RedisFlagGate(redis)
    await gate.sync(coupon(expires_in=timedelta(seconds=10)), NOW)
    later = NOW + timedelta(seconds=11)
    verdict = await gate.check(1, later)
    assert (verdict.state, verdict.reason) == (GateState.CLOSED, RejectReason.EXPIRED)
    assert await redis.get("coupon:available:1") == b"false"


async def test_a_rebuild_never_reopens_what_a_worker_closed(redis: Redis) -> None:
    gate = RedisFlagGate(redis)
    await gate.close(1, RejectReason.SOLD_OUT)  # the worker, after its commit
    await gate.sync(coupon(), NOW, only_if_missing=True)  # an API instance rebuilding from a stale read
    assert await redis.get("coupon:available:1") == b"false"
