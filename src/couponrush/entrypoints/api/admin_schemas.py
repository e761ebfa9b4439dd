"""Bodies of the administrators' routes: changing a coupon, and the pages of coupons, holders, requests, changes."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import AwareDatetime, Field, field_validator, model_validator

from couponrush.domain.model import RejectReason, RequestStatus
from couponrush.entrypoints.api.schemas import CouponName, CouponView, Quantity, _Body, _Camel, storable
from couponrush.service.coupon_admin import CouponEdit
from couponrush.service.ports import ChangeRecord, Holder, RequestRow

T = TypeVar("T")


class CouponPatch(_Body):
    """Only the fields given change; ``opensAt: null`` removes the schedule (it admits at once)."""

    name: CouponName | None = None
    quantity: Quantity | None = Field(
        default=None, description="raise it to admit more at once; never below issued + pending (409 with the floor)"
    )
    expired_at: AwareDatetime | None = None
    opens_at: AwareDatetime | None = None

    _storable = field_validator("expired_at", "opens_at")(storable)

    @model_validator(mode="after")
    def _something(self) -> CouponPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, quantity, expiredAt, opensAt")
        for name in ("name", "quantity", "expired_at") if self.model_fields_set else ():
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name.replace('_at', 'At')} cannot be null")
        return self

    def edit(self) -> CouponEdit:
        return CouponEdit(
            name=self.name,
            quantity=self.quantity,
            expired_at=self.expired_at,
            opens_at=self.opens_at,
            clear_opens_at="opens_at" in self.model_fields_set and self.opens_at is None,
        )


class Page(_Camel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last one")


class CouponPage(Page[CouponView]):
    pass


class HolderView(_Camel):
    user_id: int
    request_id: str
    issued_at: datetime

    @classmethod
    def of(cls, holder: Holder) -> HolderView:
        return cls(user_id=holder.user_id, request_id=holder.request_id, issued_at=holder.issued_at)


class RequestRowView(_Camel):
    request_id: str
    user_id: int
    status: RequestStatus
    reason: RejectReason | None
    requested_at: datetime
    decided_at: datetime | None
    redrives: int
    dead_lettered_at: datetime | None

    @classmethod
    def of(cls, row: RequestRow) -> RequestRowView:
        return cls(
            request_id=row.request_id,
            user_id=row.user_id,
            status=row.status,
            reason=row.reason,
            requested_at=row.requested_at,
            decided_at=row.decided_at,
            redrives=row.redrives,
            dead_lettered_at=row.dead_lettered_at,
        )


class ChangeView(_Camel):
    id: int
    changed_at: datetime
    actor: str = Field(description="who: api:<X-Actor header, or 'admin'>, or cli:<user>@<host>")
    action: str = Field(description="CREATE, OPEN, CLOSE or UPDATE")
    before: dict[str, Any] | None
    after: dict[str, Any]

    @classmethod
    def of(cls, change: ChangeRecord) -> ChangeView:
        return cls(
            id=change.id,
            changed_at=change.changed_at,
            actor=change.actor,
            action=change.action,
            before=change.before,
            after=change.after,
        )


class HolderPage(Page[HolderView]):
    pass


class RequestPage(Page[RequestRowView]):
    pass


class ChangePage(Page[ChangeView]):
    pass


class BadCursor(ValueError):
    pass


def encode_cursor(kind: str, *key: object) -> str:
    """An opaque cursor: the listing's name and the last row's key, base64url of JSON."""
    raw = orjson.dumps([kind, *(k.isoformat() if isinstance(k, datetime) else k for k in key)])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(kind: str, cursor: str, *types: type) -> tuple[Any, ...]:
    """The key a cursor of ``kind`` holds, each part of the given type; ``BadCursor`` for anything else."""
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise BadCursor("not a cursor this API gave out") from exc
    if not isinstance(parts, list) or len(parts) != len(types) + 1 or parts[0] != kind:
        raise BadCursor(f"not a cursor of this listing ({kind})")
    key: list[Any] = []
    for value, wanted in zip(parts[1:], types, strict=True):
        if wanted is datetime and isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError as exc:
                raise BadCursor("not a cursor this API gave out") from exc
            if moment.tzinfo is None:
                raise BadCursor("not a cursor this API gave out")
            key.append(moment)
        elif (wanted is int and type(value) is int and 0 < value < 2**63) or (
            wanted is str and isinstance(value, str) and 0 < len(value) <= 200
        ):
            key.append(value)
        else:
            raise BadCursor("not a cursor this API gave out")
    return tuple(key)
