"""The live view of a drop: one sampler per API process, shared by every viewer, reading once a second.

While at least one viewer is connected, the sampler reads the live coupons (not expired, or expired in the
last few minutes) with their counts, the requests accepted and coupons issued per second (only the last
seconds each time: a commit may land a second late), the pending requests still in the outbox, and
the publish route's latency histogram of this host's API processes. Each tick is handed to every viewer
at once. With no viewer it reads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from couponrush.service.clock import Clock, utcnow
from couponrush.service.ports import CouponSummary

log = logging.getLogger(__name__)

Buckets = list[tuple[float, float]]  # (upper bound in seconds, cumulative count)


class LiveReader(Protocol):
    async def live_coupons(self, now: datetime, ended_within_s: float, limit: int) -> list[CouponSummary]:
        """Coupons not expired, or expired within ``ended_within_s``, newest first."""
        ...

    async def per_second(
        self, coupon_ids: Sequence[int], since: datetime
    ) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
        """Requests accepted and coupons issued per epoch second since ``since``, per coupon."""
        ...

    async def unsent(self, coupon_ids: Sequence[int]) -> dict[int, int]:
        """Of each coupon's pending requests, how many are still in the outbox (not yet on Kafka)."""
        ...


def quantile(now: Buckets, before: Buckets, q: float) -> float | None:
    """The ``q`` quantile (seconds) of what was observed between two readings of a cumulative histogram,
    interpolated within its bucket as Prometheus' histogram_quantile does; None if nothing was observed."""
    earlier = dict(before)
    window = [(bound, count - earlier.get(bound, 0.0)) for bound, count in now]
    if not window or window[-1][1] <= 0:
        return None
    rank = q * window[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in window:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is all that is known
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return None


@dataclass
class LiveView:
    reader: LiveReader
    http_buckets: Callable[[], Buckets]
    interval_s: float = 1.0
    window_s: int = 300  # the charts' span
    recount_s: int = 10  # each tick recounts the last seconds (late commits land there)
    ended_within_s: float = 300.0
    max_coupons: int = 20
    clock: Clock = field(default=utcnow)
    _viewers: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _accepted: dict[int, dict[int, int]] = field(default_factory=dict)
    _issued: dict[int, dict[int, int]] = field(default_factory=dict)
    _latencies: deque[tuple[float, Buckets]] = field(default_factory=deque)
    _last: dict[str, Any] | None = None

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of ticks for one viewer: a full one first (the whole chart window), then the recent seconds."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=5)
        self._viewers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._sample(), name="live-view")
        elif self._last is not None:
            queue.put_nowait(self._tick_for_new_viewer())
        try:
            yield queue
        finally:
            self._viewers.discard(queue)
            if not self._viewers and self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task, self._last = None, None
                self._accepted.clear()
                self._issued.clear()
                self._latencies.clear()

    async def _sample(self) -> None:
        full = True
        while True:
            started = asyncio.get_running_loop().time()
            try:
                tick = await self.read(full)
                full = False
                self._last = tick
                for queue in list(self._viewers):
                    if queue.full():  # a viewer that does not keep up misses ticks, never blocks the others
                        with contextlib.suppress(asyncio.QueueEmpty):
                            queue.get_nowait()
                    queue.put_nowait(tick)
            except Exception as exc:
                log.warning("live view: could not read the drop (%r); retrying", exc)
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.05, self.interval_s - elapsed))

    async def read(self, full: bool) -> dict[str, Any]:
        now = self.clock()
        coupons = await self.reader.live_coupons(now, self.ended_within_s, self.max_coupons)
        ids = [s.coupon.id for s in coupons]
        span = self.window_s if full else self.recount_s
        first = int(now.timestamp()) - span
        accepted, issued = await self.reader.per_second(ids, datetime.fromtimestamp(first, now.tzinfo))
        unsent = await self.reader.unsent(ids)
        oldest = int(now.timestamp()) - self.window_s
        for store, fresh in ((self._accepted, accepted), (self._issued, issued)):
            for coupon_id in ids:
                series = store.setdefault(coupon_id, {})
                for second in [s for s in series if s >= first or s < oldest]:
                    del series[second]
                series.update(fresh.get(coupon_id, {}))
            for gone in set(store) - set(ids):
                del store[gone]
        p99 = self._p99()
        return {
            "at": now.isoformat(),
            "full": full,
            "windowS": self.window_s,
            "httpP99Ms": None if p99 is None else round(p99 * 1000, 2),
            "lag": sum(max(0, s.pending - unsent.get(s.coupon.id, 0)) for s in coupons),
            "coupons": [self._coupon(s, unsent.get(s.coupon.id, 0), first if not full else oldest) for s in coupons],
        }

    def _tick_for_new_viewer(self) -> dict[str, Any]:
        """The last tick with the whole chart window, for a viewer who joins between two ticks."""
        assert self._last is not None
        oldest = int(datetime.fromisoformat(self._last["at"]).timestamp()) - self.window_s
        coupons = [
            {
                **c,
                "acceptedPerS": _points(self._accepted.get(c["id"], {}), oldest),
                "issuedPerS": _points(self._issued.get(c["id"], {}), oldest),
            }
            for c in self._last["coupons"]
        ]
        return {**self._last, "full": True, "coupons": coupons}

    def _coupon(self, summary: CouponSummary, unsent: int, since: int) -> dict[str, Any]:
        coupon = summary.coupon
        return {
            "id": coupon.id,
            "name": coupon.name,
            "state": summary.state.value,
            "status": coupon.status.value,
            "quantity": coupon.quantity,
            "issued": coupon.issued_count,
            "pending": summary.pending,
            "available": summary.available,
            "lag": max(0, summary.pending - unsent),
            "inOutbox": unsent,
            "opensAt": None if coupon.opens_at is None else coupon.opens_at.isoformat(),
            "expiredAt": coupon.expired_at.isoformat(),
            "acceptedPerS": _points(self._accepted.get(coupon.id, {}), since),
            "issuedPerS": _points(self._issued.get(coupon.id, {}), since),
        }

    def _p99(self) -> float | None:
        """p99 of the publish route over the last minute, from this host's API processes."""
        loop_now = asyncio.get_running_loop().time()
        self._latencies.append((loop_now, self.http_buckets()))
        while len(self._latencies) > 2 and self._latencies[1][0] <= loop_now - 60:
            self._latencies.popleft()
        if len(self._latencies) < 2:
            return None
        return quantile(self._latencies[-1][1], self._latencies[0][1], 0.99)


def _points(series: Mapping[int, int], since: int) -> list[list[int]]:
    return [[second, count] for second, count in sorted(series.items()) if second >= since]
