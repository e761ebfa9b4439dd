"""Expiry closes the gate by itself: nobody's request has to fail first."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from couponrush.domain.model import RejectReason
from couponrush.service.clock import Clock, utcnow
from couponrush.service.logs import failed
from couponrush.service.ports import Gate, GateSnapshots
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)


async def close_expired_gates(
    snapshots: GateSnapshots,
    gate: Gate,
    stop: asyncio.Event,
    *,
    interval_s: float = 1.0,
    clock: Clock = utcnow,
) -> None:
    """Every ``interval_s``, close the gate (and the report's flag) of coupons that just expired.

    The gate scripts already refuse an expired coupon at the instant it expires; this makes the
    flag and the stored reason say so too, for readers who only look at them.
    """
    since = clock() - timedelta(days=1)
    while not stop.is_set():
        now = clock()
        try:
            for coupon_id in await snapshots.newly_expired(since, now):
                await gate.close(coupon_id, RejectReason.EXPIRED)
                log.info("coupon %s expired; its gate is closed", coupon_id)
            since = now
        except Exception as exc:
            failed(log, exc, "could not close expired gates; retrying")
        if await sleep_unless(stop, interval_s):
            return
