"""Issuing: one transaction per batch of requests; after commit (never before) close the gate if a coupon is done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import IssueOutcome, RejectReason, RequestStatus
from couponrush.service.clock import Clock, utcnow
from couponrush.service.logs import failed
from couponrush.service.ports import Gate, Issuer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuingService:
    issuer: Issuer
    gate: Gate
    clock: Clock = field(default=utcnow)

    async def handle_batch(self, events: Sequence[PublishRequested]) -> list[IssueOutcome]:
        """Issue or refuse every request in one transaction, in order; the same rules per request."""
        outcomes = await self.issuer.issue_batch(events, self.clock())
        await self._after_commit(events, outcomes)
        return outcomes

    async def _after_commit(self, events: Sequence[PublishRequested], outcomes: Sequence[IssueOutcome]) -> None:
        # The transaction has committed. Only now may the gate learn anything from it.
        refused = [
            event
            for event, outcome in zip(events, outcomes, strict=True)
            if outcome.status is RequestStatus.REJECTED and outcome.reason is not RejectReason.ALREADY_ISSUED
        ]
        # The unit reserved for a refused request goes back (also on a redelivery: release names the
        # request, so repeating it is harmless). A user refused as ALREADY_ISSUED keeps the unit
        # their issued coupon holds.
        if refused:
            await asyncio.gather(*(self._release(event) for event in refused))
        closing: dict[int, RejectReason] = {}
        for outcome in outcomes:
            coupon = outcome.coupon
            if coupon is None:
                continue
            reason = coupon.closed_reason(self.clock())
            # Only what the worker's own transaction decides: stock and expiry. Opening and closing
            # belong to administrators; a close read from this snapshot could undo a reopen since.
            if reason in (RejectReason.SOLD_OUT, RejectReason.EXPIRED):
                closing[coupon.id] = reason
        for coupon_id, reason in closing.items():
            await self._close_gate(coupon_id, reason)
        for outcome in outcomes:
            # Each line names its request (a batch decides many), for logs that follow one request.
            request = {"request_id": outcome.request_id}
            if outcome.status is RequestStatus.ISSUED:
                log.debug("issued coupon %s to user %s", outcome.coupon_id, outcome.user_id, extra=request)
            elif not outcome.replayed:
                log.info(
                    "refused coupon %s to user %s: %s",
                    outcome.coupon_id,
                    outcome.user_id,
                    outcome.reason,
                    extra=request,
                )

    async def _release(self, event: PublishRequested) -> None:
        try:
            await self.gate.release(event.coupon_id, event.user_id, event.request_id)
        except Exception as exc:
            # The refusal is committed; the unit stays reserved until the gate is rebuilt from
            # the database (which does not count refused requests).
            failed(log, exc, "could not release the reservation of request %s", event.request_id)

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
