"""The relay process: stand by until it holds the relay lock, then relay the outbox and re-drive stuck requests.

Exactly one relay sends at a time (one producer per topic keeps order; the embedded broker can
skip records with several). Losing the lock's connection stops this tenure's loops; the role then
stands by again. A failure of a tenure is logged and retried after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from couponrush.service.logs import failed
from couponrush.service.ports import EventSink, OutboxStore, StuckRequests
from couponrush.service.redrive import redrive_stuck_requests
from couponrush.service.relay import run_relay
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)


class RelayLock(Protocol):
    def exclusive(self, stop: asyncio.Event) -> AbstractAsyncContextManager[asyncio.Event | None]:
        """Hold the lock for the context: yields an event set if it is lost, or None if ``stop`` came first."""
        ...


class RoutedSink(EventSink, Protocol):
    """The sink of one tenure: follows the active topic version while ``run`` runs."""

    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayRole:
    lock: RelayLock
    outbox: OutboxStore
    # A fresh router per tenure: another relay may have switched topic versions meanwhile.
    new_sink: Callable[[], RoutedSink]
    stuck: StuckRequests
    batch_size: int = 500
    idle_scan_s: float = 1.0
    redrive_after_s: float = 30.0
    retry_pause_s: float = 1.0
    # Wraps the tenure's sink (metrics); identity by default.
    observe: Callable[[EventSink], EventSink] = lambda sink: sink

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.lock.exclusive(stop) as lost:
                    if lost is None:
                        return
                    log.info("holding the relay lock; relaying")
                    await self._tenure(stop, lost)
                    if lost.is_set():
                        log.warning("lost the relay lock's connection; re-acquiring")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed(log, exc, "relay failed; restarting in %.0fs", self.retry_pause_s)
                await sleep_unless(stop, self.retry_pause_s)

    async def _tenure(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        halt = asyncio.Event()
        watchers = [asyncio.create_task(_set_when(e, halt)) for e in (stop, lost)]
        sink = self.new_sink()
        try:
            await asyncio.gather(
                sink.run(halt),
                run_relay(
                    self.outbox, self.observe(sink), halt, batch_size=self.batch_size, idle_scan_s=self.idle_scan_s
                ),
                redrive_stuck_requests(self.stuck, halt, after_s=self.redrive_after_s),
            )
        finally:
            halt.set()
            for watcher in watchers:
                watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*watchers, return_exceptions=True)


async def _set_when(event: asyncio.Event, target: asyncio.Event) -> None:
    await event.wait()
    target.set()
