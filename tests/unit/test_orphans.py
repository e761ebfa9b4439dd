"""A unit reserved by a request that was never recorded (its API died) goes back after the grace period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.model import CouponStatus, NewCoupon
from couponrush.service.orphans import release_orphans
from couponrush.service.ports import GateState
from tests.support.fakes import FakeCoupons, FakeFence, FakeGate

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GRACE = 3.0


async def one_unit_reserved_by(request_id: str, user_id: int = 7) -> FakeGate:
    coupons, gate = FakeCoupons(), FakeGate()
    coupon = await coupons.create(NewCoupon("c", Decimal("0.1"), 1, CouponStatus.PUBLISHABLE, NOW + timedelta(days=1)))
    await gate.open(coupon, NOW, created=True)
    assert (await gate.admit(coupon.id, user_id, request_id, NOW)).state is GateState.ADMITTED
    return gate


async def test_a_unit_reserved_by_a_request_never_recorded_is_fenced_and_released_after_the_grace() -> None:
    gate, fence = await one_unit_reserved_by("lost"), FakeFence()
    later = NOW + timedelta(seconds=GRACE + 0.1)
    assert await release_orphans(gate, fence, [1], later, grace_s=GRACE) == 1
    assert fence.fenced == {"lost"}  # a recording still in flight can no longer commit it
    assert (gate.stock[1], gate.holders[1]) == (1, {})
    assert (await gate.admit(1, 7, "retry", later)).state is GateState.ADMITTED  # the user may ask again


async def test_a_recorded_request_keeps_its_unit_and_is_confirmed_once() -> None:
    gate, fence = await one_unit_reserved_by("kept"), FakeFence(recorded={"kept"})
    later = NOW + timedelta(seconds=GRACE + 0.1)
    assert await release_orphans(gate, fence, [1], later, grace_s=GRACE) == 0
    assert (gate.stock[1], gate.holders[1]) == (0, {7: "kept"})
    assert await gate.unconfirmed(1, later, 10) == []  # confirmed: not asked about again


async def test_a_reservation_younger_than_the_grace_is_left_alone() -> None:
    gate, fence = await one_unit_reserved_by("young"), FakeFence()
    assert await release_orphans(gate, fence, [1], NOW + timedelta(seconds=GRACE - 0.5), grace_s=GRACE) == 0
    assert fence.fenced == set()
    assert gate.holders[1] == {7: "young"}
