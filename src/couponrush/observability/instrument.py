"""Metrics, request ids and spans added around the service layer's ports, at the edges.

Each class wraps a port (or the issuing service) and only observes: it passes every call through
unchanged. ``bootstrap`` and the entry points put them in place, so the service code stays as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import Coupon, GateSnapshot, IssueOutcome, RejectReason, RequestStatus
from couponrush.observability import metrics, tracing
from couponrush.service.issuing import IssuingService
from couponrush.service.ports import (
    DeadLetters,
    EventSink,
    Gate,
    GateTerms,
    GateVerdict,
    InboundRecord,
    OutboundMessage,
    RecordSource,
)
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "request-id"
_ADMIT_TIMES: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class TimedGate:
    """Times every admission check (``couponrush_gate_admit_seconds``); everything else passes through."""

    inner: Gate

    async def admit(self, coupon_id: int, user_id: int, request_id: str, now: datetime) -> GateVerdict:
        started = time.perf_counter()
        verdict = "ERROR"
        try:
            result = await self.inner.admit(coupon_id, user_id, request_id, now)
            verdict = result.state.value
            return result
        finally:
            child = _ADMIT_TIMES.get(verdict)
            if child is None:
                child = _ADMIT_TIMES[verdict] = metrics.GATE_ADMIT_SECONDS.labels(verdict)
            metrics.TALLY.observe(child, time.perf_counter() - started)

    async def release(self, coupon_id: int, user_id: int, request_id: str) -> None:
        await self.inner.release(coupon_id, user_id, request_id)

    async def open(self, coupon: Coupon, now: datetime, *, created: bool = False) -> bool:
        return await self.inner.open(coupon, now, created=created)

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        await self.inner.close(coupon_id, reason)

    async def set_terms(self, coupon: Coupon) -> GateTerms:
        return await self.inner.set_terms(coupon)

    async def missing(self, coupon_ids: Sequence[int]) -> list[int]:
        return await self.inner.missing(coupon_ids)

    async def begin_rebuild(self, coupon_id: int, token: str, now: datetime, lease_s: float) -> bool:
        return await self.inner.begin_rebuild(coupon_id, token, now, lease_s)

    async def finish_rebuild(self, coupon_id: int, token: str, snapshot: GateSnapshot, now: datetime) -> bool:
        return await self.inner.finish_rebuild(coupon_id, token, snapshot, now)

    async def abort_rebuild(self, coupon_id: int, token: str) -> None:
        await self.inner.abort_rebuild(coupon_id, token)

    async def unconfirmed(self, coupon_id: int, reserved_before: datetime, limit: int) -> list[tuple[int, str]]:
        return await self.inner.unconfirmed(coupon_id, reserved_before, limit)

    async def confirm(self, coupon_id: int, reservations: Sequence[tuple[int, str]]) -> None:
        await self.inner.confirm(coupon_id, reservations)


@dataclass(frozen=True, slots=True)
class MeteredSink:
    """Counts what the relay sends: acknowledged and failed rows per topic, and each batch's duration."""

    inner: EventSink

    async def send_all(self, messages: Sequence[OutboundMessage]) -> list[str | None]:
        started = time.perf_counter()
        results = await self.inner.send_all(messages)
        metrics.RELAY_SEND_SECONDS.observe(time.perf_counter() - started)
        sent: dict[str, int] = {}
        failed: dict[str, int] = {}
        for message, error in zip(messages, results, strict=True):
            bucket = sent if error is None else failed
            bucket[message.topic] = bucket.get(message.topic, 0) + 1
        for topic, count in sent.items():
            metrics.RELAY_SENT.labels(topic).inc(count)
        for topic, count in failed.items():
            metrics.RELAY_FAILED.labels(topic).inc(count)
        return results


@dataclass
class ObservedSource:
    """Measures each consumed batch (size; time until its offsets are committed) and keeps the
    headers of its records by request id, so the issuing span can join the trace they carry."""

    inner: RecordSource
    _started: float | None = None
    _headers: dict[str, Mapping[str, bytes]] = field(default_factory=dict)

    async def next_batch(self, max_records: int, timeout: float) -> list[InboundRecord]:
        records = await self.inner.next_batch(max_records, timeout)
        if records:
            self._started = time.perf_counter()
            metrics.ISSUE_BATCH_SIZE.observe(len(records))
            if tracing.enabled():
                self._headers = {
                    r.headers[REQUEST_ID_HEADER].decode("utf-8", "replace"): r.headers
                    for r in records
                    if REQUEST_ID_HEADER in r.headers
                }
        return records

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        await self.inner.commit(records)
        if self._started is not None:
            metrics.ISSUE_BATCH_SECONDS.observe(time.perf_counter() - self._started)
            self._started = None

    def headers_of(self, request_id: str) -> Mapping[str, bytes] | None:
        return self._headers.get(request_id)


@dataclass(frozen=True, slots=True)
class MeteredDeadLetters:
    inner: DeadLetters

    async def park(
        self, record: InboundRecord, reason: str, error: str, stop: asyncio.Event, *, attempts: int = 1
    ) -> bool:
        parked = await self.inner.park(record, reason, error, stop, attempts=attempts)
        if parked:
            metrics.DEAD_LETTERS.labels(reason).inc()
        return parked


class MeteredRepairs:
    """The reconciler's repairs, counted as ``couponrush_reconcile_repairs_total{kind}``."""

    def repaired(self, kind: str) -> None:
        metrics.RECONCILE_REPAIRS.labels(kind).inc()


class HeadersOf(Protocol):
    def headers_of(self, request_id: str) -> Mapping[str, bytes] | None: ...


class _NoHeaders:
    def headers_of(self, request_id: str) -> Mapping[str, bytes] | None:
        return None


@dataclass(frozen=True, slots=True)
class ObservedIssuing(IssuingService):
    """The issuing service with the request's id on every log line it writes, a span joined to the
    request's trace, decisions counted, and the time from acceptance to committed issue measured."""

    records: HeadersOf = field(default_factory=_NoHeaders)

    async def handle_batch(self, events: Sequence[PublishRequested]) -> list[IssueOutcome]:
        # One span for the batch (a single record is a batch of one), joined to the trace of its first
        # request; each request's id is on the service's own log lines about it.
        first = events[0] if events else None
        with tracing.span(
            "couponrush.issue",
            parent_headers=self.records.headers_of(first.request_id if first else ""),
            kind="CONSUMER",
            attributes={
                "couponrush.batch_size": len(events),
                "couponrush.request_id": first.request_id if first else "",
                "couponrush.coupon_id": first.coupon_id if first else 0,
            },
        ) as span:
            outcomes = await IssuingService.handle_batch(self, events)
            now = datetime.now(UTC)
            decisions: Counter[tuple[str, str]] = Counter()
            for event, outcome in zip(events, outcomes, strict=True):
                if outcome.replayed:
                    continue
                decisions[(outcome.status.value, outcome.reason.value if outcome.reason is not None else "OK")] += 1
                if outcome.status is RequestStatus.ISSUED:
                    metrics.TIME_TO_ISSUE_SECONDS.observe(max(0.0, (now - event.requested_at).total_seconds()))
            for (status, reason), count in decisions.items():  # one counter update per kind, not per record
                metrics.ISSUE_DECISIONS.labels(status, reason).inc(count)
            if outcomes:  # the first request's, as the span's other attributes
                tracing.set_attribute(span, "couponrush.status", outcomes[0].status.value)
            return outcomes


class LagSource(Protocol):
    async def lag(self) -> dict[tuple[str, int], int]: ...


async def sample_consumer_lag(source: LagSource, stop: asyncio.Event, interval_s: float = 2.0) -> None:
    """Refresh ``couponrush_consumer_lag`` every ``interval_s`` until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(Exception):  # no consumer yet, rebalancing, broker away: try next time
            metrics.set_consumer_lag(await source.lag())
        if await sleep_unless(stop, interval_s):
            return
