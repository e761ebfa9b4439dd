"""The issuing rules, as pure functions of a coupon and the moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from couponrush.domain.model import Coupon, CouponStatus, NewCoupon, PendingRequest, RejectReason, decide_in_order

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def coupon(
    *, quantity: int = 10, issued: int = 0, status: CouponStatus = CouponStatus.PUBLISHABLE, expires_in: float = 3600
) -> Coupon:
    return Coupon(
        id=1,
        name="welcome",
        discount_rate=Decimal("0.1"),
        quantity=quantity,
        issued_count=issued,
        status=status,
        expired_at=NOW + timedelta(seconds=expires_in),
    )


def test_an_open_coupon_is_issued_to_a_new_holder() -> None:
    assert coupon().issue_decision(already_holds=False, now=NOW) is None


def test_a_user_who_already_holds_it_is_refused() -> None:
    assert coupon().issue_decision(already_holds=True, now=NOW) is RejectReason.ALREADY_ISSUED


def test_holding_it_is_the_answer_even_after_it_sold_out() -> None:
    sold_out = coupon(quantity=1, issued=1)
    assert sold_out.issue_decision(already_holds=True, now=NOW) is RejectReason.ALREADY_ISSUED


def test_no_quantity_left_means_sold_out() -> None:
    assert coupon(quantity=3, issued=3).issue_decision(already_holds=False, now=NOW) is RejectReason.SOLD_OUT


def test_expiry_is_checked_at_the_instant_it_passes() -> None:
    assert coupon(expires_in=0).issue_decision(already_holds=False, now=NOW) is RejectReason.EXPIRED
    assert coupon(expires_in=0.001).issue_decision(already_holds=False, now=NOW) is None


def test_an_unpublishable_coupon_is_not_open_whatever_its_stock() -> None:
    closed = coupon(status=CouponStatus.UNPUBLISHABLE)
    assert closed.issue_decision(already_holds=False, now=NOW) is RejectReason.NOT_OPEN


def test_closing_wins_over_expiry_and_expiry_over_stock() -> None:
    everything_wrong = coupon(quantity=1, issued=1, status=CouponStatus.UNPUBLISHABLE, expires_in=-1)
    assert everything_wrong.closed_reason(NOW) is RejectReason.NOT_OPEN
    assert coupon(quantity=1, issued=1, expires_in=-1).closed_reason(NOW) is RejectReason.EXPIRED


def test_issuing_counts_one_and_never_past_the_quantity() -> None:
    last = coupon(quantity=2, issued=1).after_issuing_one()
    assert (last.issued_count, last.remaining_quantity) == (2, 0)
    assert not last.is_open(NOW)
    with pytest.raises(ValueError, match="no quantity left"):
        last.after_issuing_one()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "  ", "name"),
        ("discount_rate", Decimal("0"), "discountRate"),
        ("discount_rate", Decimal("1.01"), "discountRate"),
        ("quantity", 0, "quantity"),
        ("expired_at", datetime(2030, 1, 1), "UTC offset"),
    ],
)
def test_a_new_coupon_refuses_impossible_values(field: str, value: object, message: str) -> None:
    values: dict[str, object] = {
        "name": "n",
        "discount_rate": Decimal("0.5"),
        "quantity": 1,
        "status": CouponStatus.PUBLISHABLE,
        "expired_at": NOW,
    }
    values[field] = value
    with pytest.raises(ValueError, match=message):
        NewCoupon(**values)  # type: ignore[arg-type]


def test_a_full_discount_is_allowed() -> None:
    assert NewCoupon("free", Decimal(1), 1, CouponStatus.PUBLISHABLE, NOW).discount_rate == 1


def pending(request_id: str, user_id: int, coupon_id: int = 1) -> PendingRequest:
    return PendingRequest(request_id, user_id, coupon_id)


def test_a_batch_is_decided_in_order_first_come_first_served() -> None:
    decisions = decide_in_order(
        [pending("a", 1), pending("b", 2), pending("c", 3)], {1: coupon(quantity=2)}, set(), NOW
    )
    assert [(d.request.request_id, d.reason) for d in decisions] == [
        ("a", None),
        ("b", None),
        ("c", RejectReason.SOLD_OUT),
    ]
    assert [d.coupon.issued_count for d in decisions if d.coupon] == [1, 2, 2]


def test_a_user_issued_earlier_in_the_batch_is_refused_later_in_it() -> None:
    decisions = decide_in_order([pending("a", 1), pending("b", 1)], {1: coupon()}, set(), NOW)
    assert [d.reason for d in decisions] == [None, RejectReason.ALREADY_ISSUED]


def test_a_user_who_held_it_before_the_batch_is_refused() -> None:
    decisions = decide_in_order([pending("a", 1), pending("b", 2)], {1: coupon()}, {(1, 1)}, NOW)
    assert [d.reason for d in decisions] == [RejectReason.ALREADY_ISSUED, None]


def test_a_batch_spanning_coupons_counts_each_on_its_own() -> None:
    other = Coupon(
        id=2,
        name="other",
        discount_rate=Decimal("0.5"),
        quantity=1,
        issued_count=0,
        status=CouponStatus.PUBLISHABLE,
        expired_at=NOW + timedelta(hours=1),
    )
    requests = [pending("a", 1, 2), pending("b", 1, 1), pending("c", 2, 2), pending("d", 3, 9)]
    decisions = decide_in_order(requests, {1: coupon(quantity=1), 2: other}, set(), NOW)
    assert [d.reason for d in decisions] == [None, None, RejectReason.SOLD_OUT, RejectReason.UNKNOWN_COUPON]


@pytest.mark.parametrize(
    ("closed", "reason"),
    [
        (coupon(status=CouponStatus.UNPUBLISHABLE), RejectReason.NOT_OPEN),
        (coupon(expires_in=-1), RejectReason.EXPIRED),
        (coupon(quantity=3, issued=3), RejectReason.SOLD_OUT),
    ],
)
def test_a_closed_coupon_refuses_the_whole_batch_with_its_reason(closed: Coupon, reason: RejectReason) -> None:
    decisions = decide_in_order([pending("a", 1), pending("b", 2)], {1: closed}, set(), NOW)
    assert [d.reason for d in decisions] == [reason, reason]


def test_deciding_a_batch_equals_deciding_its_requests_one_at_a_time() -> None:
    requests = [pending(f"r{i}", user_id=i % 7 + 1, coupon_id=i % 2 + 1) for i in range(40)]
    coupons = {1: coupon(quantity=4), 2: Coupon(2, "b", Decimal("0.2"), 3, 1, CouponStatus.PUBLISHABLE, NOW)}
    batch = decide_in_order(requests, coupons, {(3, 1)}, NOW - timedelta(seconds=1))
    single: list[RejectReason | None] = []
    state, held = dict(coupons), {(3, 1)}
    for request in requests:
        [decision] = decide_in_order([request], state, held, NOW - timedelta(seconds=1))
        single.append(decision.reason)
        if decision.coupon is not None:
            state[decision.coupon.id] = decision.coupon
        if decision.issued:
            held.add((request.user_id, request.coupon_id))
    assert [d.reason for d in batch] == single
    assert sum(d.issued for d in batch) == 4 + 2
