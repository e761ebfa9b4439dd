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
import functools
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from couponrush.domain.model import RequestStatus, RequestView
from couponrush.service.ports import RequestStatusStore

Key = tuple[int, int]  # (user id, coupon id)


class Waiters:
    """Futures of waiting requests by (user id, coupon id), set (True) when woken: a decision heard, a gap in
    what was heard, or shutdown. Timeouts are the waiter's own (``until``) and never settle them."""

    def __init__(self) -> None:
        # Usually one waiter per key: a list is the smallest container that also holds a few.
        self._waiting: dict[Key, list[asyncio.Future[bool]]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._waiting.values())

    def register(self, user_id: int, coupon_id: int) -> asyncio.Future[bool]:
        """A future set when a decision for this user and coupon is heard (or at shutdown). Register before
        reading the outcome, so that a decision committed between that read and the wait is not missed;
        ``unregister`` it when done."""
        woken: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closed:
            woken.set_result(True)
        self._waiting.setdefault((user_id, coupon_id), []).append(woken)
        return woken

    def unregister(self, user_id: int, coupon_id: int, woken: asyncio.Future[bool]) -> None:
        key = (user_id, coupon_id)
        futures = self._waiting.get(key)
        if futures is None:
            return
        with contextlib.suppress(ValueError):
            futures.remove(woken)
        if not futures:
            del self._waiting[key]

    def decided(self, pairs: Iterable[Key]) -> int:
        """Wake whoever waits for these (user, coupon) pairs; how many were woken."""
        woken = 0
        for key in pairs:
            for future in self._waiting.get(key, ()):
                if not future.done():
                    future.set_result(True)
                    woken += 1
        return woken

    def wake_all(self) -> None:
        """Notifications may have been missed: every waiter reads its outcome again."""
        for futures in self._waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(True)

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
            woken = self.waiters.register(user_id, coupon_id)
            try:
                view = await self.status.latest(user_id, coupon_id)
                if view is None or view.status is not RequestStatus.PENDING or self.waiters.closed:
                    return view
                if not await until(woken, deadline - loop.time()):
                    return view
            finally:
                self.waiters.unregister(user_id, coupon_id, woken)

    async def follow(self, user_id: int, coupon_id: int, heartbeat_s: float) -> AsyncIterator[RequestView | None]:
        """The latest request's view now, then each time it changes, until it is decided; ``None`` every
        ``heartbeat_s`` without news (a stream keeps its connection alive with it). Ends at shutdown too."""
        woken = self.waiters.register(user_id, coupon_id)
        try:
            last: RequestView | None = None
            while True:
                view = await self.status.latest(user_id, coupon_id)
                if view is not None and view != last:
                    yield view  # still registered meanwhile: a decision now is not missed
                    last = view
                if view is None or view.status is not RequestStatus.PENDING or self.waiters.closed:
                    return
                # A heartbeat's timer never settles ``woken``: only a decision (or a gap, or shutdown) does,
                # so one arriving at the very moment of a heartbeat is still there afterwards.
                while not await until(woken, heartbeat_s):
                    yield None
                # Woken: a fresh future before reading again (nothing can suspend in between).
                self.waiters.unregister(user_id, coupon_id, woken)
                woken = self.waiters.register(user_id, coupon_id)
        finally:
            self.waiters.unregister(user_id, coupon_id, woken)


def _settle(gate: asyncio.Future[bool], value: bool) -> None:
    if not gate.done():
        gate.set_result(value)


def _woken(gate: asyncio.Future[bool], _: asyncio.Future[bool]) -> None:
    _settle(gate, True)


async def until(woken: asyncio.Future[bool], timeout_s: float) -> bool:
    """Wait for ``woken`` at most ``timeout_s``: True if it was woken. ``woken`` itself is left as it is (only
    a wake-up ever settles it); the wait is a small future of its own, a callback and a timer handle."""
    if woken.done():
        return True
    if timeout_s <= 0:
        return False
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[bool] = loop.create_future()
    wake = functools.partial(_woken, gate)
    woken.add_done_callback(wake)
    timer = loop.call_later(timeout_s, _settle, gate, False)
    try:
        return await gate
    finally:
        timer.cancel()
        woken.remove_done_callback(wake)
