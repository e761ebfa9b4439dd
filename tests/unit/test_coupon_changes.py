"""Operators' changes against fakes: the derived state, what may be created or reopened, and a change during a
drop that never lets the gate be looser than the database."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from couponrush.domain.model import Coupon, CouponState, CouponStatus, InvalidField, NewCoupon, RejectReason
from couponrush.entrypoints.api.admin_schemas import BadCursor, decode_cursor, encode_cursor
from couponrush.service.admission import Admission, Refused, Unavailable
from couponrush.service.coupon_admin import ChangeRefused, CouponAdmin, CouponEdit
from couponrush.service.ports import GateState
from tests.support.fakes import FakeCoupons, FakeGate, FakeRequestLog

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def coupon(**changes: object) -> Coupon:
    base = Coupon(1, "c", Decimal("0.1"), 10, 0, CouponStatus.PUBLISHABLE, NOW + HOUR)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("subject", "pending", "state"),
    [
        (coupon(), 0, CouponState.OPEN),
        (coupon(opens_at=NOW + timedelta(seconds=1)), 0, CouponState.SCHEDULED),
        (coupon(opens_at=NOW), 0, CouponState.OPEN),  # from that instant on
        (coupon(issued_count=7), 3, CouponState.SOLD_OUT),  # pending requests hold the rest
        (coupon(issued_count=7), 2, CouponState.OPEN),
        (coupon(status=CouponStatus.UNPUBLISHABLE), 0, CouponState.CLOSED),
        (coupon(status=CouponStatus.UNPUBLISHABLE, opens_at=NOW + HOUR / 2), 0, CouponState.CLOSED),
        (coupon(expired_at=NOW), 0, CouponState.EXPIRED),
        (coupon(expired_at=NOW, status=CouponStatus.UNPUBLISHABLE, issued_count=10), 0, CouponState.EXPIRED),
    ],
)
def test_the_state_says_what_a_coupon_is(subject: Coupon, pending: int, state: CouponState) -> None:
    assert subject.state(NOW, pending) is state


async def make(**new: object) -> tuple[CouponAdmin, FakeCoupons, FakeGate, list[int]]:
    coupons, gate, rebuilds = FakeCoupons(), FakeGate(), list[int]()
    admin = CouponAdmin(coupons=coupons, gate=gate, schedule_rebuild=rebuilds.append, clock=lambda: NOW)
    fields: dict[str, object] = {"expired_at": NOW + HOUR, "quantity": 3, **new}
    await admin.create(NewCoupon("c", Decimal("0.1"), status=CouponStatus.PUBLISHABLE, **fields), actor="kim")  # type: ignore[arg-type]
    return admin, coupons, gate, rebuilds


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"expired_at": NOW - timedelta(seconds=1)}, "expiredAt"),
        ({"expired_at": NOW}, "expiredAt"),
        ({"opens_at": NOW + 2 * HOUR}, "expiredAt"),
        ({"opens_at": datetime(2026, 11, 25, 13, 0)}, "opensAt"),
    ],
)
async def test_a_coupon_that_could_never_admit_anyone_is_not_created(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as invalid:
        await make(**fields)
    assert invalid.value.field == field


async def test_creating_and_reopening_are_recorded_and_an_expired_coupon_is_not_reopened() -> None:
    admin, coupons, _, _ = await make()
    await admin.set_status(1, CouponStatus.UNPUBLISHABLE, actor="lee")
    await admin.set_status(1, CouponStatus.PUBLISHABLE, actor="lee")
    assert [(c[1], c[2]) for c in coupons.changes] == [("kim", "CREATE"), ("lee", "CLOSE"), ("lee", "OPEN")]
    expired = CouponAdmin(coupons=coupons, gate=FakeGate(), clock=lambda: NOW + HOUR)
    with pytest.raises(ChangeRefused) as refused:
        await expired.set_status(1, CouponStatus.PUBLISHABLE)
    assert refused.value.reason == "EXPIRED"


async def test_a_scheduled_coupon_opens_by_the_gates_clock_not_the_callers() -> None:
    _, coupons, gate, _ = await make(opens_at=NOW + timedelta(seconds=10))
    server_now = NOW
    gate.server_clock = lambda: server_now
    # The API host's clock runs a minute ahead: it must not open the drop early.
    admission = Admission(
        gate=gate, coupons=coupons, requests=FakeRequestLog(), clock=lambda: NOW + timedelta(minutes=1)
    )
    with pytest.raises(Refused) as refused:
        await admission.request(7, 1)
    assert (refused.value.reason, refused.value.opens_at) == (RejectReason.NOT_OPEN, NOW + timedelta(seconds=10))
    assert refused.value.opens_in_s == 10
    server_now = NOW + timedelta(seconds=10)
    assert (await admission.request(7, 1)).user_id == 7


async def test_raising_the_quantity_commits_first_and_then_admits_more() -> None:
    admin, coupons, gate, _ = await make(quantity=1)
    assert (await gate.admit(1, 7, "r7", NOW)).state is GateState.ADMITTED
    assert (await gate.admit(1, 8, "r8", NOW)).reason is RejectReason.SOLD_OUT
    changed = await admin.update(1, CouponEdit(quantity=3), actor="kim")
    assert changed is not None
    assert changed.quantity == 3
    assert [t.quantity for t in gate.terms] == [1, 3]  # the tighter terms before the commit, the new ones after
    assert (await gate.admit(1, 8, "r8", NOW)).state is GateState.ADMITTED
    assert coupons.changes[-1][1:3] == ("kim", "UPDATE")


async def test_lowering_the_quantity_never_goes_below_what_is_issued_or_reserved() -> None:
    admin, coupons, gate, _ = await make(quantity=5)
    coupons.coupons[1] = dataclasses.replace(coupons.coupons[1], issued_count=1)
    coupons.pending[1] = 1
    with pytest.raises(ChangeRefused) as below_database:
        await admin.update(1, CouponEdit(quantity=1))
    assert (below_database.value.reason, below_database.value.data["floor"]) == ("QUANTITY_BELOW_FLOOR", 2)
    for user in (1, 2, 3):  # reserved at the gate, some not recorded yet: the gate's count is the floor
        await gate.admit(1, user, f"r{user}", NOW)
    with pytest.raises(ChangeRefused) as below_gate:
        await admin.update(1, CouponEdit(quantity=2))
    assert below_gate.value.data["floor"] == 3
    assert coupons.coupons[1].quantity == 5  # nothing written
    assert gate.quantity[1] == 5
    lowered = await admin.update(1, CouponEdit(quantity=3))
    assert lowered is not None
    assert (gate.quantity[1], gate.stock[1]) == (3, 0)


async def test_an_earlier_expiry_or_a_later_opening_reaches_the_gate_before_the_database() -> None:
    admin, coupons, gate, _ = await make()
    coupons.fail_saves = 1
    with pytest.raises(ConnectionError):
        await admin.update(1, CouponEdit(expired_at=NOW + HOUR / 2, opens_at=NOW + HOUR / 4))
    # The gate was tightened first, then put back to what the database still holds.
    assert [(t.expired_at, t.opens_at) for t in gate.terms] == [(NOW + HOUR / 2, NOW + HOUR / 4), (NOW + HOUR, None)]
    assert coupons.coupons[1].expired_at == NOW + HOUR
    changed = await admin.update(1, CouponEdit(opens_at=NOW + HOUR / 4))
    assert changed is not None
    assert gate.opens[1] == NOW + HOUR / 4
    unscheduled = await admin.update(1, CouponEdit(clear_opens_at=True))
    assert unscheduled is not None
    assert unscheduled.opens_at is None
    assert gate.terms[-2].opens_at == NOW + HOUR / 4  # moving it earlier: the gate waits for the commit
    assert gate.opens[1] is None


async def test_a_change_waits_for_a_rebuild_and_a_lost_gate_is_rebuilt_after_it() -> None:
    admin, _, gate, rebuilds = await make()
    gate.rebuilding[1] = "someone"
    with pytest.raises(Unavailable):
        await admin.update(1, CouponEdit(quantity=4))
    del gate.rebuilding[1]
    gate.forget(1)
    changed = await admin.update(1, CouponEdit(quantity=4))
    assert changed is not None
    assert rebuilds == [1]
    gate.fail_terms = 1
    await gate.open(changed, NOW, created=True)
    with pytest.raises(Unavailable):
        await admin.update(1, CouponEdit(quantity=5))


async def test_an_expired_coupon_may_only_be_renamed() -> None:
    admin, coupons, gate, _ = await make()
    later = CouponAdmin(coupons=coupons, gate=gate, clock=lambda: NOW + HOUR)
    with pytest.raises(ChangeRefused) as refused:
        await later.update(1, CouponEdit(quantity=9))
    assert refused.value.reason == "EXPIRED"
    renamed = await later.update(1, CouponEdit(name="archived"))
    assert renamed is not None
    assert renamed.name == "archived"
    assert await admin.update(99, CouponEdit(name="x")) is None


def test_cursors_round_trip_and_anything_else_is_refused() -> None:
    at = NOW + timedelta(microseconds=7)
    assert decode_cursor("holders", encode_cursor("holders", at, 42), datetime, int) == (at, 42)
    for garbage in ("", "!!!", "bm90IGpzb24", encode_cursor("coupons", 1), encode_cursor("holders", "x", 1)):
        with pytest.raises(BadCursor):
            decode_cursor("holders", garbage, datetime, int)
    with pytest.raises(BadCursor):
        decode_cursor("coupons", encode_cursor("coupons", -1), int)
