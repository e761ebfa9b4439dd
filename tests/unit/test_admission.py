"""The request path against fakes: what the gate says, what is recorded, what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from couponrush.domain.model import CouponStatus, NewCoupon, RejectReason
from couponrush.service.admission import Admission, Refused, Unavailable
from tests.support.fakes import FakeCoupons, FakeGate, FakeRequestLog

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def make(
    *, quantity: int = 5, status: CouponStatus = CouponStatus.PUBLISHABLE, expires_in: float = 3600
) -> tuple[Admission, FakeGate, FakeCoupons, FakeRequestLog]:
    gate, coupons, log = FakeGate(), FakeCoupons(), FakeRequestLog()
    coupon = await coupons.create(NewCoupon("c", Decimal("0.1"), quantity, status, NOW + timedelta(seconds=expires_in)))
    await gate.sync(coupon, NOW)
    return Admission(gate=gate, coupons=coupons, requests=log, clock=lambda: NOW), gate, coupons, log


async def test_an_open_gate_records_the_request_and_answers_with_its_id() -> None:
    admission, _, _, log = await make()
    event = await admission.request(user_id=7, coupon_id=1)
    assert log.accepted == [event]
    assert (event.user_id, event.coupon_id, event.requested_at) == (7, 1, NOW)
    assert len(event.request_id) == 32


async def test_every_accepted_request_gets_its_own_id() -> None:
    admission, _, _, log = await make()
    first = await admission.request(user_id=7, coupon_id=1)
    second = await admission.request(user_id=7, coupon_id=1)
    assert first.request_id != second.request_id
    assert len(log.accepted) == 2


async def test_a_closed_gate_refuses_with_its_reason_and_records_nothing() -> None:
    admission, gate, _, log = await make()
    await gate.close(1, RejectReason.SOLD_OUT)
    with pytest.raises(Refused) as refused:
        await admission.request(user_id=7, coupon_id=1)
    assert refused.value.reason is RejectReason.SOLD_OUT
    assert log.accepted == []


async def test_an_unknown_coupon_is_refused_as_unknown() -> None:
    admission, _, _, log = await make()
    with pytest.raises(Refused) as refused:
        await admission.request(user_id=7, coupon_id=99)
    assert refused.value.reason is RejectReason.UNKNOWN_COUPON
    assert log.accepted == []


async def test_a_gate_that_lost_its_keys_is_rebuilt_from_the_database() -> None:
    admission, gate, _, log = await make()
    gate.flags.clear()
    await admission.request(user_id=7, coupon_id=1)
    assert gate.flags[1] is True
    assert len(log.accepted) == 1


async def test_a_rebuilt_gate_tells_the_truth_about_an_expired_coupon() -> None:
    admission, gate, _, _ = await make(expires_in=-1)
    gate.flags.clear()
    with pytest.raises(Refused) as refused:
        await admission.request(user_id=7, coupon_id=1)
    assert refused.value.reason is RejectReason.EXPIRED


async def test_a_request_that_cannot_be_recorded_is_not_accepted() -> None:
    admission, _, _, log = await make()
    log.fail = True
    with pytest.raises(Unavailable):
        await admission.request(user_id=7, coupon_id=1)
