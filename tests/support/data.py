"""Test data builders."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import CouponStatus, NewCoupon


def new_coupon(
    *, quantity: int = 10, status: CouponStatus = CouponStatus.PUBLISHABLE, expires_in: timedelta = timedelta(days=1)
) -> NewCoupon:
    return NewCoupon(
        name="flash sale",
        discount_rate=Decimal("0.15"),
        quantity=quantity,
        status=status,
        expired_at=datetime.now(UTC) + expires_in,
    )


def publish_requested(user_id: int, coupon_id: int, request_id: str | None = None) -> PublishRequested:
    return PublishRequested(
        request_id=request_id or uuid.uuid4().hex,
        user_id=user_id,
        coupon_id=coupon_id,
        requested_at=datetime.now(UTC),
    )
