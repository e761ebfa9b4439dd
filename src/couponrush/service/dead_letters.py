"""What the worker does with a record it cannot process: a bounded retry policy, then a dead letter.

Two kinds of failure look alike from the worker (an exception out of issuing) but need opposite
answers, so they are told apart here, in one place:

- **the infrastructure is away** (PostgreSQL restarting, a dropped connection, Redis timing out):
  nothing is wrong with the record, and skipping it would lose an accepted request. Retry it
  forever, with backoff, keeping partition order (the worker stops promptly on SIGTERM meanwhile);
- **this record can't be processed** (the database refuses its data, or processing raises for it
  every time): retry a few times with backoff in case it was a fluke, then park it on
  ``<topic>.dlq`` with the error, where it came from and how often it was tried, and move on.

Parking a request also gives its reserved unit back to the gate and marks the request
dead-lettered in the database (so gate rebuilds and the re-drive leave it alone); ``couponrush dlq
replay`` reserves again and re-publishes it. See docs/OPERATIONS.md, "Dead letters".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from couponrush.domain.events import MalformedEvent, PublishRequested
from couponrush.service.logs import failed
from couponrush.service.ports import DeadLetterLedger, DeadLetters, Gate, InboundRecord

log = logging.getLogger(__name__)


def is_transient_os_error(exc: BaseException) -> bool:
    """The driver-free default: lost connections and timeouts are the infrastructure, not the record."""
    return isinstance(exc, OSError | TimeoutError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a record whose processing failed.

    ``is_infrastructure`` says whether a failure is the infrastructure being away (retried
    forever) rather than something wrong with this record (retried ``max_attempts`` times).
    """

    max_attempts: int = 5
    base_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    is_infrastructure: Callable[[BaseException], bool] = field(default=is_transient_os_error)

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based): exponential, capped."""
        return float(min(self.max_backoff_s, self.base_backoff_s * 2 ** max(0, failures - 1)))

    def gives_up(self, record_failures: int) -> bool:
        return record_failures >= self.max_attempts


@dataclass(frozen=True, slots=True)
class ReleasingDeadLetters:
    """Parks a record, then undoes what admission did for its request: the unit goes back to the gate.

    The request is first marked dead-lettered in the database, so a gate rebuild does not reserve
    the unit again and the re-drive does not re-publish it; then the gate releases the unit held by
    exactly this request. Both are best effort after the record is safely parked: if either fails,
    the unit stays reserved until the next reconciliation (``couponrush reconcile``), never sold twice.
    Records that are not a parseable request (malformed, poison) reserved nothing and release nothing.
    """

    inner: DeadLetters
    gate: Gate
    ledger: DeadLetterLedger

    async def park(
        self, record: InboundRecord, reason: str, error: str, stop: asyncio.Event, *, attempts: int = 1
    ) -> bool:
        if not await self.inner.park(record, reason, error, stop, attempts=attempts):
            return False
        event = parse_request(record)
        if event is None:
            return True
        try:
            if await self.ledger.mark_dead_lettered(event.request_id, f"{reason}: {error}"[:2000]):
                await self.gate.release(event.coupon_id, event.user_id, event.request_id)
                log.warning("released the reservation of dead-lettered request %s", event.request_id)
        except Exception as exc:
            failed(log, exc, "could not release dead-lettered request %s; reconcile will", event.request_id)
        return True


def parse_request(record: InboundRecord) -> PublishRequested | None:
    if record.value is None:
        return None
    try:
        return PublishRequested.from_json(record.value)
    except (MalformedEvent, ValueError):
        return None
