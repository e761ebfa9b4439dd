"""The issuing worker: consume requests, issue each in its own transaction, then commit the offsets.

Commit policy, in one place: an offset is committed only after every record before it in the
batch was either issued/refused in a committed transaction or parked on the dead-letter topic.
A crash anywhere before the commit means redelivery, which the idempotent issuer absorbs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

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

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = await self.source.next_batch(self.batch_size, self.poll_timeout_s)
            if not records:
                continue
            done: list[InboundRecord] = []
            for record in records:
                if not await self._process(record, stop):
                    break  # asked to stop while the database was away: hand the rest back
                done.append(record)
            await self.source.commit(done)

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
