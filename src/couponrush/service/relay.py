"""The outbox relay: send unsent rows to Kafka in order, mark each sent only after the broker acknowledged it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from couponrush.service.logs import failed
from couponrush.service.ports import EventSink, OutboxStore
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)

_MIN_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0


@dataclass(frozen=True, slots=True)
class RelayPass:
    sent: int
    failed: int


async def relay_once(outbox: OutboxStore, sink: EventSink, batch_size: int) -> RelayPass:
    rows = await outbox.unsent(batch_size)
    if not rows:
        return RelayPass(0, 0)
    results = await sink.send_all([row.message for row in rows])
    sent = [row.id for row, error in zip(rows, results, strict=True) if error is None]
    failed = {row.id: error for row, error in zip(rows, results, strict=True) if error is not None}
    await outbox.mark_sent(sent)
    await outbox.mark_failed(failed)
    if failed:
        log.warning(
            "relay: %d sent, %d not acknowledged (will retry): %s",
            len(sent),
            len(failed),
            next(iter(failed.values())),
        )
    return RelayPass(len(sent), len(failed))


async def run_relay(
    outbox: OutboxStore,
    sink: EventSink,
    stop: asyncio.Event,
    *,
    batch_size: int,
    idle_scan_s: float,
) -> None:
    """Relay until ``stop`` is set. Wakes on NOTIFY; backs off while the broker or database is away."""
    backoff = _MIN_BACKOFF_S
    while not stop.is_set():
        try:
            result = await relay_once(outbox, sink, batch_size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed(log, exc, "relay pass failed; retrying in %.1fs", backoff)
            result = RelayPass(0, 1)
        if result.failed:
            if await sleep_unless(stop, backoff):
                return
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            continue
        backoff = _MIN_BACKOFF_S
        if result.sent == 0:
            waiter = asyncio.ensure_future(outbox.wait_for_rows(idle_scan_s))
            stopper = asyncio.ensure_future(stop.wait())
            _done, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
