"""Issuing: one transaction per request, then (after commit, never before) close the gate if the coupon is done."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import IssueOutcome, RejectReason, RequestStatus
from couponrush.service.clock import Clock, utcnow
from couponrush.service.ports import Gate, Issuer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuingService:
    issuer: Issuer
    gate: Gate
    clock: Clock = field(default=utcnow)

    async def handle(self, event: PublishRequested) -> IssueOutcome:
        outcome = await self.issuer.issue(event, self.clock())
        # The transaction has committed. Only now may the gate learn the coupon is done.
        coupon = outcome.coupon
        if coupon is not None:
            reason = coupon.closed_reason(self.clock())
            if reason is not None:
                await self._close_gate(coupon.id, reason)
        if outcome.status is RequestStatus.ISSUED:
            log.debug("issued coupon %s to user %s", outcome.coupon_id, outcome.user_id)
        elif not outcome.replayed:
            log.info("refused coupon %s to user %s: %s", outcome.coupon_id, outcome.user_id, outcome.reason)
        return outcome

    async def _close_gate(self, coupon_id: int, reason: RejectReason) -> None:
        for attempt in range(5):
            try:
                await self.gate.close(coupon_id, reason)
                return
            except Exception:
                # The issue itself is committed; a gate left open only lets requests through
                # that the worker then refuses (and records) as SOLD_OUT.
                log.warning("could not close the gate of coupon %s (attempt %d)", coupon_id, attempt + 1)
                await asyncio.sleep(0.05 * 2**attempt)
        log.error("gave up closing the gate of coupon %s; it stays open until Redis answers", coupon_id)
