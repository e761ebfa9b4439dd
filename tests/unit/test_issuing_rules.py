"""The issuing rules, as pure functions of a coupon and the moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from couponrush.domain.model import Coupon, CouponStatus, NewCoupon, RejectReason

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
