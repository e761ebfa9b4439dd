"""The issuing worker: consume requests, issue them, then commit the offsets.

Commit policy, in one place: an offset is committed only after every record before it in the
batch was either issued/refused in a committed transaction or parked on the dead-letter topic.
A crash anywhere before the commit means redelivery, which the idempotent issuer absorbs.

Every well-formed record of a poll is issued in one transaction, in partition order, then the
offsets are committed once. When a batch fails for a reason of its own (not the infrastructure),
its records are settled one by one (each a batch of one), so only the culprit is parked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from couponrush.domain.events import MalformedEvent, PublishRequested
from couponrush.service.dead_letters import RetryPolicy
from couponrush.service.issuing import IssuingService
from couponrush.service.ports import DeadLetters, InboundRecord, RecordSource, UnprocessableEvent
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Worker:
    source: RecordSource
    issuing: IssuingService
    dead_letters: DeadLetters
    batch_size: int = 500
    poll_timeout_s: float = 0.5
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = await self.source.next_batch(self.batch_size, self.poll_timeout_s)
            if not records:
                continue
            await self.source.commit(await self._settle_batch(records, stop))

    async def _settle_batch(self, records: list[InboundRecord], stop: asyncio.Event) -> list[InboundRecord]:
        """Settle a poll's records; returns those settled, always a prefix of ``records``."""
        events: list[PublishRequested] = []
        first_event_at: int | None = None
        parked: set[int] = set()
        for index, record in enumerate(records):
            try:
                if record.value is None:
                    raise ValueError("record has no value")
                events.append(PublishRequested.from_json(record.value))
                if first_event_at is None:
                    first_event_at = index
            except (MalformedEvent, ValueError) as exc:
                if not await self._park(record, "MALFORMED", str(exc), stop):
                    return records[: index if first_event_at is None else first_event_at]
                parked.add(index)
        if not events:
            return records
        outages = 0
        while True:
            try:
                await self.issuing.handle_batch(events)
                return records
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, UnprocessableEvent) or not self.retry.is_infrastructure(exc):
                    # Something in the batch can't be processed (not the infrastructure being away):
                    # settle the records one by one, so only the culprit is retried a bounded number
                    # of times and parked.
                    log.warning("a batch of %d failed (%s); settling it record by record", len(events), exc)
                    done: list[InboundRecord] = []
                    for index, record in enumerate(records):
                        if index not in parked and not await self._process(record, stop):
                            break
                        done.append(record)
                    return done
                # The database (or something under it) is away: nothing was committed for this batch,
                # so retry it rather than skip it. Order within each partition is kept.
                outages += 1
                delay = self.retry.backoff(outages)
                log.warning("issuing a batch of %d failed (%s); retrying in %.1fs", len(events), exc, delay)
                if await sleep_unless(stop, delay):
                    assert first_event_at is not None
                    return records[:first_event_at]

    async def _park(
        self, record: InboundRecord, reason: str, error: str, stop: asyncio.Event, attempts: int = 1
    ) -> bool:
        parked = await self.dead_letters.park(record, reason, error, stop, attempts=attempts)
        if parked:
            log.warning(
                "parked %s record %s[%d]@%d on the dead-letter topic: %s",
                reason.lower(),
                record.topic,
                record.partition,
                record.offset,
                error[:200],
            )
        return parked

    async def _process(self, record: InboundRecord, stop: asyncio.Event) -> bool:
        """Handle one record; True once it is settled (issued, refused or parked)."""
        try:
            if record.value is None:
                raise ValueError("record has no value")
            event = PublishRequested.from_json(record.value)
        except (MalformedEvent, ValueError) as exc:
            return await self._park(record, "MALFORMED", str(exc), stop)
        outages = 0  # consecutive failures of the infrastructure: retried forever
        failures = 0  # failures of this record itself: retried up to the policy's bound
        while True:
            try:
                await self.issuing.handle_batch([event])
                return True
            except asyncio.CancelledError:
                raise
            except UnprocessableEvent as exc:
                return await self._park(record, "UNPROCESSABLE", str(exc), stop, failures + 1)
            except Exception as exc:
                if self.retry.is_infrastructure(exc):
                    # The database (or something under it) is away: nothing was committed for this
                    # record, so retry it rather than skip it. Order within the partition is kept.
                    outages += 1
                    delay = self.retry.backoff(outages)
                    log.warning("issuing request %s failed (%s); retrying in %.1fs", event.request_id, exc, delay)
                else:
                    failures += 1
                    if self.retry.gives_up(failures):
                        error = f"{type(exc).__name__}: {exc}"
                        return await self._park(record, "FAILED", error, stop, failures)
                    delay = self.retry.backoff(failures)
                    log.exception("processing request %s failed (attempt %d)", event.request_id, failures)
                if await sleep_unless(stop, delay):
                    return False
