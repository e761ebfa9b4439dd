"""HTTP request and response bodies (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from couponrush.domain.model import Coupon, CouponStatus, UserCoupon

MAX_ID = 2**63 - 1


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CouponCreate(_Camel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    discount_rate: Annotated[Decimal, Field(gt=0, le=1, max_digits=5, decimal_places=4)]
    quantity: Annotated[int, Field(strict=True, gt=0, le=2**31 - 1)]
    status: CouponStatus
    expired_at: AwareDatetime


class PublishRequest(_Camel):
    coupon_id: Annotated[int, Field(strict=True, gt=0, le=MAX_ID)]


class CouponView(_Camel):
    id: int
    name: str
    discount_rate: float
    quantity: int
    issued_count: int
    remaining_quantity: int
    status: CouponStatus
    expired_at: datetime

    @classmethod
    def of(cls, coupon: Coupon) -> CouponView:
        return cls(
            id=coupon.id,
            name=coupon.name,
            discount_rate=float(coupon.discount_rate),
            quantity=coupon.quantity,
            issued_count=coupon.issued_count,
            remaining_quantity=coupon.remaining_quantity,
            status=coupon.status,
            expired_at=coupon.expired_at,
        )


class PublishAccepted(_Camel):
    request_id: str
    user_id: int
    coupon_id: int
    requested_at: datetime


class UserCouponView(_Camel):
    coupon_id: int
    user_id: int
    name: str
    discount_rate: float
    issued_at: datetime
    expired_at: datetime

    @classmethod
    def of(cls, held: UserCoupon) -> UserCouponView:
        return cls(
            coupon_id=held.coupon_id,
            user_id=held.user_id,
            name=held.name,
            discount_rate=float(held.discount_rate),
            issued_at=held.issued_at,
            expired_at=held.expired_at,
        )
