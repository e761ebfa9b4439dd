"""Rebuilding a coupon's admission gate from the database, without ever selling a unit twice.

Redis is a cache here: it keeps nothing on disk, and a flush or restart wipes every reservation.
Rebuilding one coupon:
1. fence it (``rebuilding``): from now on admissions to it answer 503 instead of reserving;
2. wait out a grace period longer than any admission's bounded recording step, so every request
   that reserved against the lost state is either committed in the database or was refused;
3. snapshot the database (holders + latest pending request per user) and write it as the new state;
4. release the units of requests the worker refused between the snapshot and the write (its
   releases hit a fenced gate and were no-ops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field

from couponrush.service.clock import Clock, utcnow
from couponrush.service.logs import failed
from couponrush.service.ports import Gate, GateSnapshots

log = logging.getLogger(__name__)


@dataclass
class GateRebuilder:
    gate: Gate
    snapshots: GateSnapshots
    grace_s: float = 3.0
    clock: Clock = field(default=utcnow)
    _tasks: dict[int, asyncio.Task[bool]] = field(default_factory=dict)
    _last_try: dict[int, float] = field(default_factory=dict)

    @property
    def lease_s(self) -> float:
        # How long a fence holds if its rebuilder dies: then another process may take over.
        return self.grace_s + 30.0

    async def rebuild(self, coupon_id: int) -> bool:
        """Rebuild one coupon's gate. False when another process is rebuilding it right now."""
        token = uuid.uuid4().hex
        if not await self.gate.begin_rebuild(coupon_id, token, self.clock(), self.lease_s):
            return False
        try:
            await asyncio.sleep(self.grace_s)
            snapshot = await self.snapshots.snapshot(coupon_id)
            finished = snapshot is not None and await self.gate.finish_rebuild(coupon_id, token, snapshot, self.clock())
        except BaseException:
            # Cancelled (shutting down) or the database is away: lift our fence rather than leave
            # the coupon refusing everyone until the lease ends; the next request retries.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.gate.abort_rebuild(coupon_id, token))
            raise
        if not finished or snapshot is None:
            await self.gate.abort_rebuild(coupon_id, token)
            return False
        pending = list(snapshot.reservations.values())
        for _coupon, user_id, request_id in await self.snapshots.rejected(pending):
            await self.gate.release(coupon_id, user_id, request_id)
        log.info(
            "rebuilt the gate of coupon %s: %d reserved, %d left", coupon_id, len(snapshot.reservations), snapshot.stock
        )
        return True

    def schedule(self, coupon_id: int) -> None:
        """Start rebuilding in the background unless this process already is, or tried within the last second."""
        running = self._tasks.get(coupon_id)
        if running is not None and not running.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_try.get(coupon_id, -1e9) < 1.0:
            return
        self._last_try[coupon_id] = loop.time()
        self._tasks[coupon_id] = loop.create_task(self._rebuild_logged(coupon_id))

    async def _rebuild_logged(self, coupon_id: int) -> bool:
        try:
            return await self.rebuild(coupon_id)
        except Exception as exc:
            failed(log, exc, "rebuilding the gate of coupon %s failed; the next request retries", coupon_id)
            return False

    async def rebuild_all(self) -> dict[int, bool]:
        """Rebuild every open coupon's gate, concurrently. Safe while requests are being served."""
        ids = await self.snapshots.open_coupon_ids(self.clock())
        results = await asyncio.gather(*(self._rebuild_logged(c) for c in ids))
        return dict(zip(ids, results, strict=True))

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
