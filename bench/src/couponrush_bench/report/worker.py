"""The report's worker: take one record, issue it in one transaction, commit its offset, take the next.

Built from the product's worker: its ``Worker`` (the same parsing, retries, dead letters and commit
policy) fed one record at a time from each poll, with a batch size of one, so every record is its own
``IssuingService.handle_batch([event])`` and its own offset commit. The rest of the role (joining the
group, closing expired coupons, the topic version) is the product's ``WorkerRole``; gate reconciliation
is off: the report's design has none, and the flag gate holds no reservations to compare.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from couponrush.bootstrap import (
    build_worker,
    versioned_worker_source,
    worker_dead_letter_sink,
    worker_source,
)
from couponrush.config import Settings
from couponrush.roles.worker import WorkerRole
from couponrush.service.ports import InboundRecord, RecordSource
from couponrush.service.worker import Worker
from couponrush_bench.report.services import open_report_services


@dataclass
class OneRecordAtATime:
    """Polls ``poll_size`` records from ``inner`` and hands them out one per ``next_batch`` (as a listener
    called per record gets them); commits go straight through."""

    inner: RecordSource
    poll_size: int = 500
    _polled: deque[InboundRecord] = field(default_factory=deque)

    async def next_batch(self, max_records: int, timeout: float) -> list[InboundRecord]:
        if not self._polled:
            self._polled.extend(await self.inner.next_batch(self.poll_size, timeout))
        return [self._polled.popleft()] if self._polled else []

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        await self.inner.commit(records)


def report_worker(worker: Worker, poll_size: int) -> Worker:
    """The product's worker, made the report's: one record, one transaction, one offset commit."""
    return dataclasses.replace(worker, source=OneRecordAtATime(worker.source, poll_size), batch_size=1)


async def run_worker(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = worker_source(settings)
    dlq_sink = worker_dead_letter_sink(settings)
    try:
        async with open_report_services(settings) as services:
            source = versioned_worker_source(services, consumer, dlq_sink)
            role = WorkerRole(
                source=source,
                worker=report_worker(build_worker(services, source, dlq_sink), settings.worker_batch_size),
                snapshots=services.snapshots,
                gate=services.gate,
                reconciler=services.reconciler(),
                lag=consumer,
                fence=services.request_log(),
                reconcile_interval_s=0,
            )
            await role.run(stop)
    finally:
        await dlq_sink.close()
