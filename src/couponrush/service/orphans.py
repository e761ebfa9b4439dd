"""Units held by requests that were never recorded go back within seconds.

Admission reserves a unit in Redis, then records the request in PostgreSQL. An API process that dies
between the two (SIGKILL, OOM, a host lost) leaves a unit reserved for a request that does not exist:
the user's retry is told ALREADY_REQUESTED and the unit is lost to the drop until a reconcile. The
gate keeps every reservation as "unconfirmed" (with its time) until it is seen recorded; this sweep
takes those older than a grace period (longer than any recording may take), asks the database, and:

- recorded: confirmed (nothing else to do; the worker issues or refuses it);
- not recorded: fenced in the database first (a row REJECTED NOT_RECORDED, so a recording still in
  flight can never commit it afterwards), then its unit is released.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from couponrush.service.clock import Clock, utcnow
from couponrush.service.logs import failed
from couponrush.service.ports import Gate
from couponrush.service.reconcile import RepairCounter
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)


class Fence(Protocol):
    async def fence_unrecorded(
        self, coupon_id: int, reservations: Sequence[tuple[int, str]], now: datetime
    ) -> set[str]:
        """Make sure none of these requests can be recorded from now on; returns those that were not."""
        ...


async def release_orphans(
    gate: Gate, fence: Fence, coupon_ids: Sequence[int], now: datetime, *, grace_s: float, limit: int = 1000
) -> int:
    """One sweep over these coupons; returns how many units went back."""
    released = 0
    for coupon_id in coupon_ids:
        stale = await gate.unconfirmed(coupon_id, now - timedelta(seconds=grace_s), limit)
        if not stale:
            continue
        fenced = await fence.fence_unrecorded(coupon_id, stale, now)
        for user_id, request_id in stale:
            if request_id in fenced:
                await gate.release(coupon_id, user_id, request_id)
                log.warning(
                    "released the unit of coupon %s held by request %s, never recorded (its API died?)",
                    coupon_id,
                    request_id,
                    extra={"request_id": request_id},
                )
        await gate.confirm(coupon_id, [(u, r) for u, r in stale if r not in fenced])
        released += len(fenced)
    return released


async def release_orphans_periodically(
    gate: Gate,
    fence: Fence,
    open_coupons: Callable[[datetime], Awaitable[list[int]]],
    stop: asyncio.Event,
    *,
    grace_s: float,
    interval_s: float = 1.0,
    clock: Clock = utcnow,
    counter: RepairCounter | None = None,
) -> None:
    while not stop.is_set():
        try:
            now = clock()
            released = await release_orphans(gate, fence, await open_coupons(now), now, grace_s=grace_s)
            if counter is not None:
                for _ in range(released):
                    counter.repaired("unrecorded_reservation")
        except Exception as exc:
            failed(log, exc, "could not sweep unrecorded reservations; retrying")
        if await sleep_unless(stop, interval_s):
            return
