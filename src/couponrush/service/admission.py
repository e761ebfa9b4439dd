"""The request path: ask the gate, record the accepted request through the outbox, answer at once."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import RejectReason
from couponrush.service.clock import Clock, utcnow
from couponrush.service.ports import CouponStore, Gate, GateState, RequestLog

log = logging.getLogger(__name__)


class Refused(Exception):
    """The gate said no; ``reason`` says why (and maps to 404 or 409)."""

    def __init__(self, coupon_id: int, reason: RejectReason) -> None:
        super().__init__(f"coupon {coupon_id}: {reason.value}")
        self.coupon_id = coupon_id
        self.reason = reason


class Unavailable(Exception):
    """The request could not be recorded durably, so it was not accepted (503)."""


@dataclass(frozen=True, slots=True)
class Admission:
    gate: Gate
    coupons: CouponStore
    requests: RequestLog
    clock: Clock = field(default=utcnow)

    async def request(self, user_id: int, coupon_id: int) -> PublishRequested:
        now = self.clock()
        verdict = await self.gate.check(coupon_id, now)
        if verdict.state is GateState.MISSING:
            # Never opened in this Redis (unknown coupon, or Redis lost its data): the database decides,
            # and the gate is restored from it without overwriting anything a worker wrote meanwhile.
            coupon = await self.coupons.get(coupon_id)
            if coupon is None:
                raise Refused(coupon_id, RejectReason.UNKNOWN_COUPON)
            await self.gate.sync(coupon, now, only_if_missing=True)
            verdict = await self.gate.check(coupon_id, now)
        if verdict.state is not GateState.OPEN:
            raise Refused(coupon_id, verdict.reason or RejectReason.SOLD_OUT)

        event = PublishRequested(request_id=uuid.uuid4().hex, user_id=user_id, coupon_id=coupon_id, requested_at=now)
        try:
            await self.requests.record_accepted(event)
        except Exception as exc:
            log.exception("could not record request %s", event.request_id)
            raise Unavailable("the request could not be recorded; nothing was accepted, try again") from exc
        return event
