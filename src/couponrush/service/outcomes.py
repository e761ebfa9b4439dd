"""Answers without polling: a client waits for its request's outcome, and the worker's decision wakes it.

One ``Waiters`` per API process holds a future per waiting HTTP request, keyed by (user id, coupon id).
Whoever hears that requests were decided (a PostgreSQL LISTEN in the API process, fed by a NOTIFY the
database sends when the issuing transaction commits) calls ``decided`` once per notification; the woken
requests read their outcome once. Idle, a waiter is a future in a dict and a timer handle: no task,
no loop, no CPU. A missed notification (the listener's connection dropped) wakes everyone to re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from couponrush.domain.model import RequestStatus, RequestView
from couponrush.service.ports import RequestStatusStore

Key = tuple[int, int]  # (user id, coupon id)


class Waiters:
    def __init__(self) -> None:
        self._waiting: dict[Key, set[asyncio.Future[None]]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    @contextlib.contextmanager
    def watch(self, user_id: int, coupon_id: int) -> Iterator[asyncio.Future[None]]:
        """A future set when a decision for this user and coupon is heard (or at shutdown); registered before
        the caller reads the outcome, so a decision committed between that read and the wait is not missed."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            woken.set_result(None)
        key = (user_id, coupon_id)
        futures = self._waiting.setdefault(key, set())
        futures.add(woken)
        try:
            yield woken
        finally:
            futures.discard(woken)
            if not futures:
                self._waiting.pop(key, None)

    def decided(self, pairs: Iterable[Key]) -> int:
        """Wake whoever waits for these (user, coupon) pairs; how many were woken."""
        woken = 0
        for key in pairs:
            for future in self._waiting.get(key, ()):
                if not future.done():
                    future.set_result(None)
                    woken += 1
        return woken

    def wake_all(self) -> None:
        """Notifications may have been missed: every waiter reads its outcome again."""
        for futures in self._waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def close(self) -> None:
        """Shutting down: every waiter answers what it has now, and nobody waits any more."""
        self._closed = True
        self.wake_all()


@dataclass(frozen=True, slots=True)
class RequestOutcomes:
    status: RequestStatusStore
    waiters: Waiters

    async def wait(self, user_id: int, coupon_id: int, timeout_s: float) -> RequestView | None:
        """The latest request's view once it is decided, or as it stands after ``timeout_s`` (None: no request)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            with self.waiters.watch(user_id, coupon_id) as woken:
                view = await self.status.latest(user_id, coupon_id)
                if view is None or view.status is not RequestStatus.PENDING or self.waiters.closed:
                    return view
                if not await _until(woken, deadline - loop.time()):
                    return view

    async def follow(self, user_id: int, coupon_id: int, heartbeat_s: float) -> AsyncIterator[RequestView | None]:
        """The latest request's view now, then each time it changes, until it is decided; ``None`` every
        ``heartbeat_s`` without news (a stream keeps its connection alive with it). Ends at shutdown too."""
        loop = asyncio.get_running_loop()
        last: RequestView | None = None
        while True:
            with self.waiters.watch(user_id, coupon_id) as woken:
                view = await self.status.latest(user_id, coupon_id)
                if view is not None and view != last:
                    yield view
                    last = view
                if view is None or view.status is not RequestStatus.PENDING or self.waiters.closed:
                    return
                beat = loop.time() + heartbeat_s
                while not await _until(woken, beat - loop.time()):
                    yield None
                    beat = loop.time() + heartbeat_s


async def _until(woken: asyncio.Future[None], timeout_s: float) -> bool:
    """Wait for ``woken`` at most ``timeout_s``: True if it was set (a timer handle, no task)."""
    if woken.done():
        return True
    if timeout_s <= 0:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(woken)
    except TimeoutError:
        return woken.done()
    return True
