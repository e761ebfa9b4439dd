"""The request path against fakes: what the gate says, what is reserved, recorded, refused, given back."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from couponrush.domain.model import CouponStatus, NewCoupon, RejectReason
from couponrush.service.admission import Admission, Refused, Unavailable
from tests.support.fakes import FakeCoupons, FakeGate, FakeRequestLog

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def make(
    *,
    quantity: int = 5,
    status: CouponStatus = CouponStatus.PUBLISHABLE,
    expires_in: float = 3600,
) -> tuple[Admission, FakeGate, FakeRequestLog, list[int]]:
    gate, coupons, log = FakeGate(), FakeCoupons(), FakeRequestLog()
    coupon = await coupons.create(NewCoupon("c", Decimal("0.1"), quantity, status, NOW + timedelta(seconds=expires_in)))
    await gate.open(coupon, NOW, created=True)
    rebuilds: list[int] = []
    admission = Admission(gate=gate, coupons=coupons, requests=log, schedule_rebuild=rebuilds.append, clock=lambda: NOW)
    return admission, gate, log, rebuilds


async def refusal(admission: Admission, user_id: int, coupon_id: int = 1) -> RejectReason:
    with pytest.raises(Refused) as refused:
        await admission.request(user_id, coupon_id)
    return refused.value.reason


async def test_an_accepted_request_holds_a_reserved_unit_and_is_recorded_with_its_id() -> None:
    admission, gate, log, _ = await make(quantity=5)
    event = await admission.request(user_id=7, coupon_id=1)
    assert log.accepted == [event]
    assert gate.holders[1] == {7: event.request_id}
    assert gate.stock[1] == 4
    assert (event.user_id, event.coupon_id, event.requested_at) == (7, 1, NOW)


async def test_ok_is_answered_exactly_quantity_times_and_then_sold_out() -> None:
    admission, gate, log, _ = await make(quantity=3)
    for user in (1, 2, 3):
        await admission.request(user, 1)
    assert await refusal(admission, 4) is RejectReason.SOLD_OUT
    assert len(log.accepted) == 3
    assert gate.stock[1] == 0


async def test_a_user_who_taps_twice_is_told_already_requested() -> None:
    admission, gate, log, _ = await make(quantity=5)
    await admission.request(7, 1)
    assert await refusal(admission, 7) is RejectReason.ALREADY_REQUESTED
    assert len(log.accepted) == 1
    assert gate.stock[1] == 4


async def test_a_duplicate_after_the_sell_out_is_still_told_already_requested() -> None:
    admission, _, _, _ = await make(quantity=1)
    await admission.request(7, 1)
    assert await refusal(admission, 7) is RejectReason.ALREADY_REQUESTED
    assert await refusal(admission, 8) is RejectReason.SOLD_OUT


async def test_closed_and_expired_coupons_are_refused_before_anything_is_reserved() -> None:
    closed, gate, _, _ = await make(status=CouponStatus.UNPUBLISHABLE)
    assert await refusal(closed, 7) is RejectReason.NOT_OPEN
    assert gate.holders[1] == {}
    expired, gate, _, _ = await make(expires_in=-1)
    assert await refusal(expired, 7) is RejectReason.EXPIRED
    assert gate.stock[1] == 5


async def test_an_unknown_coupon_is_refused_as_unknown() -> None:
    admission, _, log, rebuilds = await make()
    assert await refusal(admission, 7, coupon_id=99) is RejectReason.UNKNOWN_COUPON
    assert log.accepted == []
    assert rebuilds == []


async def test_a_request_that_cannot_be_recorded_gives_its_unit_back_and_is_not_accepted() -> None:
    admission, gate, log, _ = await make(quantity=1)
    log.fail = True
    with pytest.raises(Unavailable):
        await admission.request(7, 1)
    assert gate.holders[1] == {}
    assert gate.stock[1] == 1
    log.fail = False
    await admission.request(7, 1)  # the same user may try again and get the unit
    assert gate.stock[1] == 0


async def test_a_gate_that_lost_its_state_is_rebuilt_before_admitting_again() -> None:
    admission, gate, log, rebuilds = await make()
    gate.forget(1)
    with pytest.raises(Unavailable):
        await admission.request(7, 1)
    assert rebuilds == [1]
    assert log.accepted == []


async def test_a_gate_being_rebuilt_answers_unavailable() -> None:
    admission, gate, log, _ = await make()
    gate.rebuilding[1] = "someone"
    with pytest.raises(Unavailable):
        await admission.request(7, 1)
    assert log.accepted == []


async def test_a_request_committed_before_its_error_stands_and_keeps_its_unit() -> None:
    admission, gate, log, _ = await make(quantity=1)
    log.fail_after_commit = True
    event = await admission.request(7, 1)  # the database has it: OK is the truth
    assert gate.holders[1] == {7: event.request_id}
    assert gate.stock[1] == 0


async def test_when_it_cannot_be_told_whether_a_request_was_recorded_its_unit_is_kept() -> None:
    admission, gate, log, _ = await make(quantity=1)
    admission = dataclasses.replace(admission, record_timeout_s=0.05)
    log.fail, log.unreachable = True, True
    with pytest.raises(Unavailable):
        await admission.request(7, 1)
    assert gate.stock[1] == 0  # never sold twice; a rebuild from the database settles it


async def test_a_database_back_within_the_bound_tells_the_request_was_not_recorded_and_the_unit_goes_back() -> None:
    admission, gate, log, _ = await make(quantity=1)
    log.fail = True
    answers = iter([ConnectionError("restarting"), ConnectionError("restarting"), None])
    original = log.exists

    async def restarting(request_id: str) -> bool:
        failure = next(answers)
        if failure is not None:
            raise failure
        return await original(request_id)

    log.exists = restarting  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await admission.request(7, 1)
    assert gate.stock[1] == 1  # the unit is not lost to the drop


async def test_a_gate_that_fails_after_reserving_gives_the_unit_back_and_answers_unavailable() -> None:
    admission, gate, log, _ = await make(quantity=1)
    original = gate.admit

    async def reserve_then_lose_the_reply(coupon_id: int, user_id: int, request_id: str, now: datetime) -> object:
        await original(coupon_id, user_id, request_id, now)
        raise ConnectionError("reply lost")

    gate.admit = reserve_then_lose_the_reply  # type: ignore[method-assign,assignment]
    with pytest.raises(Unavailable):
        await admission.request(7, 1)
    assert gate.holders[1] == {}
    assert gate.stock[1] == 1
    assert log.accepted == []
