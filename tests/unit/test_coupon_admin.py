"""Closing and reopening a coupon: the gate follows at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.model import CouponStatus, NewCoupon, RejectReason
from couponrush.service.coupon_admin import CouponAdmin
from couponrush.service.ports import GateState
from tests.support.fakes import FakeCoupons, FakeGate

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def make() -> tuple[CouponAdmin, FakeGate, list[int]]:
    gate, rebuilds = FakeGate(), list[int]()
    admin = CouponAdmin(coupons=FakeCoupons(), gate=gate, schedule_rebuild=rebuilds.append, clock=lambda: NOW)
    await admin.create(NewCoupon("c", Decimal("0.1"), 5, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1)))
    return admin, gate, rebuilds


async def test_closing_refuses_at_once_and_reopening_admits_again() -> None:
    admin, gate, _ = await make()
    await gate.admit(1, 7, "r1", NOW)
    closed = await admin.set_status(1, CouponStatus.UNPUBLISHABLE)
    assert closed is not None
    assert closed.status is CouponStatus.UNPUBLISHABLE
    verdict = await gate.admit(1, 8, "r2", NOW)
    assert (verdict.state, verdict.reason) == (GateState.CLOSED, RejectReason.NOT_OPEN)
    await admin.set_status(1, CouponStatus.PUBLISHABLE)
    assert (await gate.admit(1, 8, "r3", NOW)).state is GateState.ADMITTED
    assert gate.holders[1] == {7: "r1", 8: "r3"}  # reservations survive a close and reopen


async def test_reopening_a_coupon_whose_gate_was_lost_rebuilds_it() -> None:
    admin, gate, rebuilds = await make()
    gate.forget(1)
    await admin.set_status(1, CouponStatus.PUBLISHABLE)
    assert rebuilds == [1]


async def test_an_unknown_coupon_cannot_be_closed() -> None:
    admin, _, _ = await make()
    assert await admin.set_status(42, CouponStatus.UNPUBLISHABLE) is None
