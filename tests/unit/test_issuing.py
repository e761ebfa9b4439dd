"""Issuing against fakes: after commit, the gate closes exactly when the coupon is done."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import CouponStatus, NewCoupon, RejectReason, RequestStatus
from couponrush.service.issuing import IssuingService
from tests.support.fakes import FakeCoupons, FakeGate, FakeIssuer, handle_one

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def make(quantity: int) -> tuple[IssuingService, FakeGate, FakeCoupons]:
    coupons, gate = FakeCoupons(), FakeGate()
    coupon = await coupons.create(
        NewCoupon("c", Decimal("0.2"), quantity, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1))
    )
    await gate.open(coupon, NOW, created=True)
    return IssuingService(issuer=FakeIssuer(coupons), gate=gate, clock=lambda: NOW), gate, coupons


def request(request_id: str, user_id: int, coupon_id: int = 1) -> PublishRequested:
    return PublishRequested(request_id=request_id, user_id=user_id, coupon_id=coupon_id, requested_at=NOW)


async def test_issuing_with_stock_left_keeps_the_gate_open() -> None:
    service, gate, _ = await make(quantity=2)
    outcome = await handle_one(service, request("r1", 1))
    assert outcome.status is RequestStatus.ISSUED
    assert gate.closes == []


async def test_issuing_the_last_one_closes_the_gate_as_sold_out() -> None:
    service, gate, _ = await make(quantity=1)
    await handle_one(service, request("r1", 1))
    assert gate.closes == [(1, RejectReason.SOLD_OUT)]


async def test_a_refusal_for_stock_is_recorded_with_its_reason_and_closes_the_gate() -> None:
    service, gate, _ = await make(quantity=1)
    await handle_one(service, request("r1", 1))
    outcome = await handle_one(service, request("r2", 2))
    assert (outcome.status, outcome.reason) == (RequestStatus.REJECTED, RejectReason.SOLD_OUT)
    assert gate.closes[-1] == (1, RejectReason.SOLD_OUT)


async def test_a_refused_reserved_request_gives_its_unit_back() -> None:
    service, gate, coupons = await make(quantity=2)
    await gate.admit(1, 5, "r1", NOW)
    assert gate.stock[1] == 1
    coupons.coupons[1] = dataclasses.replace(coupons.coupons[1], expired_at=NOW)  # expired in between
    outcome = await handle_one(service, request("r1", 5))
    assert outcome.reason is RejectReason.EXPIRED
    assert gate.holders[1] == {}
    assert gate.stock[1] == 2


async def test_a_duplicate_refusal_keeps_the_unit_the_users_coupon_holds() -> None:
    service, gate, _ = await make(quantity=3)
    await gate.admit(1, 5, "r1", NOW)
    await handle_one(service, request("r1", 5))
    outcome = await handle_one(service, request("r2", 5))  # slipped past a gate, refused by the database
    assert outcome.reason is RejectReason.ALREADY_ISSUED
    assert gate.holders[1] == {5: "r1"}
    assert gate.stock[1] == 2


async def test_a_second_request_of_the_same_user_is_refused_as_a_duplicate() -> None:
    service, _, coupons = await make(quantity=5)
    await handle_one(service, request("r1", 1))
    outcome = await handle_one(service, request("r2", 1))
    assert outcome.reason is RejectReason.ALREADY_ISSUED
    assert len(coupons.held) == 1


async def test_a_redelivered_request_changes_nothing() -> None:
    service, _, coupons = await make(quantity=5)
    first = await handle_one(service, request("r1", 1))
    again = await handle_one(service, request("r1", 1))
    assert again.replayed
    assert again.status is first.status
    assert coupons.coupons[1].issued_count == 1


async def test_a_gate_that_does_not_answer_does_not_undo_the_issue() -> None:
    service, gate, coupons = await make(quantity=1)
    gate.fail_closes = 2
    outcome = await handle_one(service, request("r1", 1))
    assert outcome.status is RequestStatus.ISSUED
    assert gate.closes == [(1, RejectReason.SOLD_OUT)]
    assert coupons.coupons[1].issued_count == 1
