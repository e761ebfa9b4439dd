"""HTTP request and response bodies (camelCase on the wire)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

from couponrush.domain.model import CouponState, CouponStatus, RejectReason, RequestStatus, RequestView, UserCoupon
from couponrush.service.ports import CouponSummary

MAX_ID = 2**63 - 1


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class _Body(BaseModel):
    """A request body: exactly the documented (camelCase) field names; ``coupon_id`` is not ``couponId``."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=False, validate_by_alias=True, extra="forbid")


CouponName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
]
Quantity = Annotated[int, Field(strict=True, gt=0, le=2**31 - 1)]


def storable(value: datetime | None) -> datetime | None:
    # PostgreSQL stores UTC; an offset near year 9999 would overflow on the way there.
    if value is not None and not (datetime(1970, 1, 2, tzinfo=UTC) <= value <= datetime(9000, 1, 1, tzinfo=UTC)):
        raise ValueError("must lie between 1970-01-02 and 9000-01-01")
    return value


class CouponCreate(_Body):
    name: CouponName
    discount_rate: Annotated[Decimal, Field(gt=0, le=1, max_digits=5, decimal_places=4)]
    quantity: Quantity
    status: CouponStatus
    expired_at: AwareDatetime
    opens_at: AwareDatetime | None = Field(
        default=None,
        description="when requests start being admitted (ISO-8601 with offset), by the gate's clock; "
        "absent: as soon as it is PUBLISHABLE",
    )

    _storable = field_validator("expired_at", "opens_at")(storable)

    @model_validator(mode="after")
    def _opens_before_expiry(self) -> CouponCreate:
        if self.opens_at is not None and self.expired_at <= self.opens_at:
            raise ValueError("expiredAt must be after opensAt")
        return self


class PublishRequest(_Body):
    coupon_id: Annotated[int, Field(strict=True, gt=0, le=MAX_ID)]


class CouponView(_Camel):
    id: int
    name: str
    discount_rate: float
    quantity: int
    issued_count: int
    remaining_quantity: int = Field(description="quantity - issuedCount: units not issued yet")
    status: CouponStatus = Field(description="as stored: what an administrator set")
    expired_at: datetime
    opens_at: datetime | None = Field(description="when it starts admitting (null: no schedule)")
    state: CouponState = Field(
        description="what it is now: SCHEDULED, OPEN, SOLD_OUT (every unit issued or held by a pending "
        "request), CLOSED (UNPUBLISHABLE) or EXPIRED"
    )
    pending_count: int = Field(description="accepted requests not yet decided (each holds a unit)")
    available_quantity: int = Field(description="units a request can still get: quantity - issued - pending")

    @classmethod
    def of(cls, summary: CouponSummary) -> CouponView:
        coupon = summary.coupon
        return cls(
            id=coupon.id,
            name=coupon.name,
            discount_rate=float(coupon.discount_rate),
            quantity=coupon.quantity,
            issued_count=coupon.issued_count,
            remaining_quantity=coupon.remaining_quantity,
            status=coupon.status,
            expired_at=coupon.expired_at,
            opens_at=coupon.opens_at,
            state=summary.state,
            pending_count=summary.pending,
            available_quantity=summary.available,
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


class RequestStatusView(_Camel):
    request_id: str
    user_id: int
    coupon_id: int
    status: RequestStatus
    reason: RejectReason | None
    requested_at: datetime
    decided_at: datetime | None
    issued_at: datetime | None

    @classmethod
    def of(cls, view: RequestView) -> RequestStatusView:
        return cls(
            request_id=view.request_id,
            user_id=view.user_id,
            coupon_id=view.coupon_id,
            status=view.status,
            reason=view.reason,
            requested_at=view.requested_at,
            decided_at=view.decided_at,
            issued_at=view.issued_at,
        )
