"""Group commit: many callers' small writes, one transaction, each caller told the outcome of its own.

Under a rush, each accepted request used to cost its own transaction (two inserts and a commit,
three round trips and an fsync). Here callers queue their item and wait; a flusher takes whatever
is queued the moment it is free (no linger: alone, an item is flushed at once) and writes it all in
one transaction. Up to ``concurrency`` flushes run at a time, so batches grow with the load and
the latency of one stays that of one transaction.

What a caller learns is exact where it can be: an item taken out of the queue before any flush
started is ``NotRecorded`` for sure; a flush that failed before its commit was sent recorded
nothing (``NotRecorded``); a flush that failed during its commit may or may not have recorded
(any other exception), and the caller asks the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from couponrush.service.ports import NotRecorded

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    outcome: asyncio.Future[None]
    # When it stops waiting in the queue (loop time): taken by no flush by then, it is not recorded.
    deadline: float


@dataclass
class GroupCommitter(Generic[T]):
    """Queue items; flush them in batches of up to ``max_batch`` with ``flush``.

    ``flush`` writes a batch in one transaction and returns the positions of items it could not
    take (each of those callers is told ``NotRecorded``); it raises ``NotRecorded`` when it knows
    nothing was committed; any other exception means "unknown" (e.g. the connection died during COMMIT).
    """

    flush: Callable[[Sequence[T]], Awaitable[Collection[int]]]
    max_batch: int = 500
    concurrency: int = 2
    _queue: deque[_Entry[T]] = field(default_factory=deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _flushers: list[asyncio.Task[None]] = field(default_factory=list)
    _closing: bool = False
    _expiring: asyncio.TimerHandle | None = None
    batches: int = 0
    items: int = 0

    def start(self) -> None:
        if not self._flushers:
            # A fresh context: a flusher serves every caller, so it must not carry the first one's
            # request id or trace (whatever a caller's item needs from its context is in the item).
            self._flushers = [
                asyncio.create_task(self._run(), name=f"group-commit-{n}", context=contextvars.Context())
                for n in range(self.concurrency)
            ]

    async def submit(self, item: T, timeout: float) -> None:
        """Return once ``item`` is committed. Bounded: at most ``timeout`` waiting in the queue, then the flush.

        No timer per item: one timer at the earliest deadline of the queue expires whatever no flush took by
        then (``NotRecorded``: certainly not written). An entry a flush took is bounded by that flush's own
        timeout.
        """
        if self._closing:
            raise NotRecorded("shutting down")
        self.start()
        loop = asyncio.get_running_loop()
        entry = _Entry(item, loop.create_future(), loop.time() + timeout)
        self._queue.append(entry)
        self._wakeup.set()
        if self._expiring is None or self._expiring.when() > entry.deadline:
            if self._expiring is not None:
                self._expiring.cancel()
            self._expiring = loop.call_at(entry.deadline, self._expire)
        await entry.outcome

    def _expire(self) -> None:
        self._expiring = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        if any(entry.deadline <= now for entry in self._queue):
            kept: deque[_Entry[T]] = deque()
            for entry in self._queue:
                if entry.deadline > now:
                    kept.append(entry)
                elif not entry.outcome.done():
                    entry.outcome.set_exception(NotRecorded("not flushed within its bound"))
            self._queue = kept
        if self._queue:
            self._expiring = loop.call_at(min(entry.deadline for entry in self._queue), self._expire)

    async def _run(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            batch: list[_Entry[T]] = []
            while self._queue and len(batch) < self.max_batch:
                batch.append(self._queue.popleft())
            started = time.perf_counter()
            try:
                refused = await self.flush([entry.item for entry in batch])
            except asyncio.CancelledError:
                for entry in batch:
                    if not entry.outcome.done():
                        entry.outcome.set_exception(NotRecorded("flush cancelled"))
                raise
            except Exception as exc:
                log.warning("group commit of %d item(s) failed: %r", len(batch), exc)
                for entry in batch:
                    if not entry.outcome.done():
                        entry.outcome.set_exception(exc)
            else:
                self.batches += 1
                self.items += len(batch)
                for index, entry in enumerate(batch):
                    if entry.outcome.done():
                        continue
                    if index in refused:
                        entry.outcome.set_exception(NotRecorded("refused by the flush"))
                    else:
                        entry.outcome.set_result(None)
            log.debug("flushed %d item(s) in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        """Flush what is queued, then stop the flushers."""
        self._closing = True
        self._wakeup.set()
        if self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)
        self._flushers = []
        # A caller's outcome future is never left pending, even if a flusher died.
        while self._queue:
            entry = self._queue.popleft()
            if not entry.outcome.done():
                entry.outcome.set_exception(NotRecorded("shutting down"))
