"""The request path: ask the gate, record the accepted request through the outbox, answer at once.

With the reserving gate, "accepted" means a unit is reserved for this request: the answer is OK
only once both the reservation and the durable record exist. If recording fails, the unit goes back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import RejectReason
from couponrush.service.clock import Clock, utcnow
from couponrush.service.logs import failed
from couponrush.service.ports import (
    CouponStore,
    Gate,
    GateState,
    GateUnreachable,
    GateVerdict,
    NotRecorded,
    RequestLog,
)

log = logging.getLogger(__name__)


class Refused(Exception):
    """The gate said no; ``reason`` says why (and maps to 404 or 409). A scheduled coupon refused
    NOT_OPEN also says when it opens and how long until then (by the gate's clock)."""

    def __init__(
        self,
        coupon_id: int,
        reason: RejectReason,
        *,
        opens_at: datetime | None = None,
        opens_in_s: float | None = None,
    ) -> None:
        super().__init__(f"coupon {coupon_id}: {reason.value}")
        self.coupon_id = coupon_id
        self.reason = reason
        self.opens_at = opens_at
        self.opens_in_s = opens_in_s


class Unavailable(Exception):
    """Nothing was accepted: the request could not be recorded, or the gate is being rebuilt (503)."""


@dataclass(frozen=True, slots=True)
class Admission:
    gate: Gate
    coupons: CouponStore
    requests: RequestLog
    # Called when a reserving gate has no state for an existing coupon (Redis lost it): rebuild it.
    schedule_rebuild: Callable[[int], None] = lambda _coupon_id: None
    # A bound on asking whether a failed recording happened anyway.
    record_timeout_s: float = 2.0
    clock: Clock = field(default=utcnow)
    # Where request ids come from; the API passes the HTTP request's id, so logs and the answer agree.
    new_request_id: Callable[[], str] = lambda: uuid.uuid4().hex

    async def request(self, user_id: int, coupon_id: int) -> PublishRequested:
        now = self.clock()
        request_id = self.new_request_id()
        try:
            verdict = await self.gate.admit(coupon_id, user_id, request_id, now)
            if verdict.state is GateState.MISSING:
                verdict = await self._gate_missing(user_id, coupon_id, request_id)
        except (Refused, Unavailable):
            raise
        except GateUnreachable as exc:
            log.warning("admission is unavailable (%s); refused request %s with 503", exc, request_id)
            raise Unavailable("admission is unavailable right now; nothing was accepted, try again") from exc
        except Exception as exc:
            # Redis failed, maybe after the script reserved (a lost reply): give back whatever this
            # request may hold (release names the request, so this is safe if it holds nothing).
            log.warning("gate failed for request %s (%r); giving back whatever it may hold", request_id, exc)
            await self._give_back(coupon_id, user_id, request_id)
            raise Unavailable("admission is unavailable right now; nothing was accepted, try again") from exc
        if verdict.state is GateState.REBUILDING:
            # Normally someone is rebuilding it; if that rebuilder died, this takes over once its lease ends.
            self.schedule_rebuild(coupon_id)
            raise Unavailable("admission to this coupon is being restored; try again in a few seconds")
        if verdict.state is GateState.DUPLICATE:
            raise Refused(coupon_id, RejectReason.ALREADY_REQUESTED)
        if verdict.state is not GateState.ADMITTED:
            reason = verdict.reason or RejectReason.SOLD_OUT
            raise Refused(coupon_id, reason, opens_at=verdict.opens_at, opens_in_s=verdict.opens_in_s)

        event = PublishRequested(request_id=request_id, user_id=user_id, coupon_id=coupon_id, requested_at=now)
        try:
            await self.requests.record_accepted(event)  # bounded by the request log itself
        except NotRecorded as exc:
            log.warning("could not record request %s (%s); giving its reservation back", request_id, exc)
            await self._give_back(coupon_id, user_id, request_id)
            raise Unavailable("the request could not be recorded; nothing was accepted, try again") from exc
        except Exception as exc:
            # The failure may have struck after the commit (a timeout or a dropped connection during
            # COMMIT): ask the database before giving the unit back, or two users could hold one unit.
            recorded = await self._was_recorded(request_id)
            if recorded:
                log.warning("request %s was recorded despite an error (%s); it stands", request_id, exc)
                return event
            if recorded is False:
                failed(log, exc, "could not record request %s; giving its reservation back", request_id)
                await self._give_back(coupon_id, user_id, request_id)
            else:
                # Unknown: keep the unit (never sell it twice). A gate rebuild settles it from the database.
                failed(log, exc, "could not record request %s, nor tell whether it was; keeping its unit", request_id)
            raise Unavailable("the request could not be recorded; nothing was accepted, try again") from exc
        return event

    async def _was_recorded(self, request_id: str) -> bool | None:
        """Ask the database whether the request was recorded; None if it can't tell.

        Asked again for a while (PostgreSQL restarting takes a second or two): answering "unknown"
        keeps the unit reserved for a request that may not exist, and that unit is then lost to the
        drop until a reconciliation frees it.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 3 * self.record_timeout_s
        pause = 0.1
        while True:
            try:
                async with asyncio.timeout(self.record_timeout_s):
                    return await self.requests.exists(request_id)
            except Exception:
                if loop.time() + pause > give_up:
                    return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _gate_missing(self, user_id: int, coupon_id: int, request_id: str) -> GateVerdict:
        coupon = await self.coupons.get(coupon_id)
        if coupon is None:
            raise Refused(coupon_id, RejectReason.UNKNOWN_COUPON)
        # Redis lost this coupon's reservations: admitting now could sell a unit twice.
        self.schedule_rebuild(coupon_id)
        raise Unavailable("admission to this coupon is being restored; try again in a few seconds")

    async def _give_back(self, coupon_id: int, user_id: int, request_id: str) -> None:
        try:
            await self.gate.release(coupon_id, user_id, request_id)
        except Exception as exc:
            # Redis is away too: the unit stays reserved until the gate is rebuilt from the
            # database, which does not count this request (it was never recorded).
            log.warning("could not give back the reservation of request %s: %r", request_id, exc)
