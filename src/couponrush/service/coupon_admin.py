"""What administrators do to coupons: create, close, reopen. The gate follows at once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from couponrush.domain.model import Coupon, CouponStatus, NewCoupon, RejectReason
from couponrush.service.clock import Clock, utcnow
from couponrush.service.logs import failed
from couponrush.service.ports import CouponStore, Gate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CouponAdmin:
    coupons: CouponStore
    gate: Gate
    schedule_rebuild: Callable[[int], None] = lambda _coupon_id: None
    clock: Clock = field(default=utcnow)

    async def create(self, new: NewCoupon) -> Coupon:
        coupon = await self.coupons.create(new)
        try:
            if not await self.gate.open(coupon, self.clock(), created=True):
                # Redis holds a gate under this id already (a database reset under a live Redis):
                # it is not this coupon's; rebuild it from the database.
                self.schedule_rebuild(coupon.id)
        except Exception as exc:
            # The coupon exists; its first request finds no gate and has it rebuilt from the database.
            failed(log, exc, "coupon %s created but its gate could not be opened yet", coupon.id)
        return coupon

    async def set_status(self, coupon_id: int, status: CouponStatus) -> Coupon | None:
        coupon = await self.coupons.set_status(coupon_id, status)
        if coupon is None:
            return None
        if status is CouponStatus.UNPUBLISHABLE:
            await self.gate.close(coupon_id, RejectReason.NOT_OPEN)
        elif not await self.gate.open(coupon, self.clock()):
            self.schedule_rebuild(coupon_id)
        return coupon
