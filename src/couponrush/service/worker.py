"""The issuing worker: consume requests, issue them, then commit the offsets.

Commit policy, in one place: an offset is committed only after every record before it in the
batch was either issued/refused in a committed transaction or parked on the dead-letter topic.
A crash anywhere before the commit means redelivery, which the idempotent issuer absorbs.

Two modes. ``batch`` (default): every well-formed record of a poll is issued in one transaction,
in partition order, then the offsets are committed once. ``single``: the report's way, one record,
one transaction, one offset commit (kept to measure against).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from couponrush.domain.events import PublishRequested
from couponrush.service.issuing import IssuingService
from couponrush.service.ports import DeadLetters, InboundRecord, RecordSource, UnprocessableEvent
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0


@dataclass(frozen=True, slots=True)
class Worker:
    source: RecordSource
    issuing: IssuingService
    dead_letters: DeadLetters
    batch_size: int = 500
    poll_timeout_s: float = 0.5

    mode: Literal["batch", "single"] = "batch"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = await self.source.next_batch(self.batch_size, self.poll_timeout_s)
            if not records:
                continue
            if self.mode == "single":
                for record in records:
                    if not await self._process(record, stop):
                        break  # asked to stop while the database was away: hand the rest back
                    await self.source.commit([record])
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
            except (ValidationError, ValueError) as exc:
                if not await self._park(record, "MALFORMED", str(exc), stop):
                    return records[: index if first_event_at is None else first_event_at]
                parked.add(index)
        if not events:
            return records
        backoff = 0.1
        while True:
            try:
                await self.issuing.handle_batch(events)
                return records
            except asyncio.CancelledError:
                raise
            except UnprocessableEvent as exc:
                # One of them can never be stored: settle them one by one, so only that one is parked.
                log.warning("a batch of %d was refused (%s); settling it record by record", len(events), exc)
                done: list[InboundRecord] = []
                for index, record in enumerate(records):
                    if index not in parked and not await self._process(record, stop):
                        break
                    done.append(record)
                return done
            except Exception:
                # The database (or something under it) failed: nothing was committed for this batch,
                # so retry it rather than skip it. Order within each partition is kept.
                log.exception("issuing a batch of %d failed; retrying in %.1fs", len(events), backoff)
                if await sleep_unless(stop, backoff):
                    assert first_event_at is not None
                    return records[:first_event_at]
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _park(self, record: InboundRecord, reason: str, error: str, stop: asyncio.Event) -> bool:
        parked = await self.dead_letters.park(record, reason, error, stop)
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
        except (ValidationError, ValueError) as exc:
            return await self._park(record, "MALFORMED", str(exc), stop)
        backoff = 0.1
        while True:
            try:
                await self.issuing.handle(event)
                return True
            except asyncio.CancelledError:
                raise
            except UnprocessableEvent as exc:
                return await self._park(record, "UNPROCESSABLE", str(exc), stop)
            except Exception:
                # The database (or something under it) failed: nothing was committed for this
                # record, so retry it rather than skip it. Order within the partition is kept.
                log.exception("issuing request %s failed; retrying in %.1fs", event.request_id, backoff)
                if await sleep_unless(stop, backoff):
                    return False
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
