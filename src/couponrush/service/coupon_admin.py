"""What administrators do to coupons: create, close, reopen, change during a drop. The gate follows at once.

Every change is recorded (who, when, before, after) in the same transaction as the change itself.

Changing what the gate admits by (quantity, expiry, opening time) keeps one invariant: the gate is
never looser than the database, or it could tell OK to a request the worker then refuses. So a change
is written in two steps under the coupon's change lock: first the gate gets the tighter of the old and
new terms (the lower quantity, the earlier expiry, the later opening; refused at once, nothing written,
if more units are reserved than the quantity asked for), then the database commits the new terms,
then the gate gets them. Raising the quantity thus admits more the moment it is committed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from couponrush.domain.model import Coupon, CouponStatus, InvalidField, NewCoupon, RejectReason, check_times
from couponrush.service.admission import Unavailable
from couponrush.service.clock import Clock, utcnow
from couponrush.service.logs import failed
from couponrush.service.ports import CouponStore, Gate, TermsOutcome

log = logging.getLogger(__name__)


class ChangeRefused(Exception):
    """The change contradicts the coupon's state (409): ``reason`` is the word, ``data`` what explains it."""

    def __init__(self, coupon_id: int, reason: str, message: str, **data: Any) -> None:
        super().__init__(f"coupon {coupon_id}: {message}")
        self.coupon_id = coupon_id
        self.reason = reason
        self.message = message
        self.data = data


@dataclass(frozen=True, slots=True)
class CouponEdit:
    """What to change; None leaves a field as it is (``clear_opens_at``: no schedule any more)."""

    name: str | None = None
    quantity: int | None = None
    expired_at: datetime | None = None
    opens_at: datetime | None = None
    clear_opens_at: bool = False

    def applied_to(self, coupon: Coupon) -> Coupon:
        if self.name is not None and not self.name.strip():
            raise InvalidField("name", "must not be blank")
        if self.quantity is not None and self.quantity <= 0:
            raise InvalidField("quantity", "must be greater than 0")
        opens_at = None if self.clear_opens_at else (self.opens_at or coupon.opens_at)
        changed = dataclasses.replace(
            coupon,
            name=coupon.name if self.name is None else self.name,
            quantity=coupon.quantity if self.quantity is None else self.quantity,
            expired_at=self.expired_at or coupon.expired_at,
            opens_at=opens_at,
        )
        check_times(changed.expired_at, changed.opens_at)
        return changed

    @property
    def touches_the_gate(self) -> bool:
        return (
            self.quantity is not None
            or self.expired_at is not None
            or self.opens_at is not None
            or (self.clear_opens_at)
        )


def _tighter(old: Coupon, new: Coupon) -> Coupon:
    """The terms that admit no one either set would refuse."""
    opens = [t for t in (old.opens_at, new.opens_at) if t is not None]
    return dataclasses.replace(
        new,
        quantity=min(old.quantity, new.quantity),
        expired_at=min(old.expired_at, new.expired_at),
        # No schedule on one side means "open now": the later of the two is the other side's.
        opens_at=max(opens) if opens else None,
    )


def _below_floor(coupon: Coupon, asked: int, floor: int, issued: int, pending: int) -> ChangeRefused:
    return ChangeRefused(
        coupon.id,
        "QUANTITY_BELOW_FLOOR",
        f"quantity {asked} is below the {floor} unit(s) already issued or reserved",
        floor=floor,
        issuedCount=issued,
        pendingCount=pending,
    )


@dataclass(frozen=True, slots=True)
class CouponAdmin:
    coupons: CouponStore
    gate: Gate
    schedule_rebuild: Callable[[int], None] = lambda _coupon_id: None
    clock: Clock = field(default=utcnow)

    async def create(self, new: NewCoupon, *, actor: str = "system") -> Coupon:
        new.check_not_over(self.clock())
        coupon = await self.coupons.create(new, actor=actor)
        try:
            if not await self.gate.open(coupon, self.clock(), created=True):
                # Redis holds a gate under this id already (a database reset under a live Redis):
                # it is not this coupon's; rebuild it from the database.
                self.schedule_rebuild(coupon.id)
        except Exception as exc:
            # The coupon exists; its first request finds no gate and has it rebuilt from the database.
            failed(log, exc, "coupon %s created but its gate could not be opened yet", coupon.id)
        return coupon

    async def set_status(self, coupon_id: int, status: CouponStatus, *, actor: str = "system") -> Coupon | None:
        if status is CouponStatus.PUBLISHABLE:
            current = await self.coupons.get(coupon_id)
            if current is None:
                return None
            if self.clock() >= current.expired_at:
                raise ChangeRefused(coupon_id, RejectReason.EXPIRED.value, "it has expired and cannot be opened")
        coupon = await self.coupons.set_status(coupon_id, status, actor=actor)
        if coupon is None:
            return None
        if status is CouponStatus.UNPUBLISHABLE:
            await self.gate.close(coupon_id, RejectReason.NOT_OPEN)
        elif not await self.gate.open(coupon, self.clock()):
            self.schedule_rebuild(coupon_id)
        return coupon

    async def update(self, coupon_id: int, edit: CouponEdit, *, actor: str = "system") -> Coupon | None:
        """Change name, quantity, expiry or opening time; None for an unknown coupon.

        Raises ``InvalidField`` (a value breaks a rule), ``ChangeRefused`` (EXPIRED: the drop is over;
        QUANTITY_BELOW_FLOOR: fewer than the units issued or reserved) or ``Unavailable`` (the gate is
        being rebuilt: try again in a few seconds).
        """
        async with self.coupons.changing(coupon_id) as change:
            if change is None:
                return None
            old, now = change.coupon, self.clock()
            new = edit.applied_to(old)
            if edit.touches_the_gate and now >= old.expired_at:
                raise ChangeRefused(coupon_id, RejectReason.EXPIRED.value, "it has expired; only its name may change")
            if edit.expired_at is not None and edit.expired_at <= now:
                raise InvalidField("expiredAt", "must be in the future")
            floor = old.issued_count + change.pending
            if new.quantity < floor:
                raise _below_floor(old, new.quantity, floor, old.issued_count, change.pending)
            gate_has_state = True
            if edit.touches_the_gate:
                try:
                    terms = await self.gate.set_terms(_tighter(old, new))
                except Exception as exc:
                    failed(log, exc, "could not change the gate of coupon %s; nothing was changed", coupon_id)
                    raise Unavailable(
                        "the gate could not be changed right now; nothing was changed, try again"
                    ) from exc
                if terms.outcome is TermsOutcome.BELOW_HOLDERS:
                    # Requests admitted but not recorded yet hold units too: the gate's count is the floor.
                    raise _below_floor(old, new.quantity, terms.holders, old.issued_count, change.pending)
                if terms.outcome is TermsOutcome.REBUILDING:
                    raise Unavailable("the gate of this coupon is being rebuilt; try again in a few seconds")
                gate_has_state = terms.outcome is TermsOutcome.APPLIED
            try:
                saved = await change.save(new, actor=actor, action="UPDATE")
            except Exception:
                if edit.touches_the_gate and gate_has_state:
                    await self._follow(old)  # the gate goes back to what the database still holds
                raise
            if edit.touches_the_gate:
                if gate_has_state:
                    await self._follow(saved)
                else:
                    self.schedule_rebuild(coupon_id)  # a missing gate is rebuilt from the database
        return saved

    async def _follow(self, coupon: Coupon) -> None:
        """The gate takes the database's terms; if it can't, it is rebuilt from the database."""
        try:
            terms = await self.gate.set_terms(coupon)
            if terms.outcome is not TermsOutcome.APPLIED:
                self.schedule_rebuild(coupon.id)
        except Exception as exc:
            failed(log, exc, "the gate of coupon %s could not follow a change; rebuilding it", coupon.id)
            self.schedule_rebuild(coupon.id)
