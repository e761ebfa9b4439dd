"""Reading and replaying dead letters (``couponrush dlq list|replay``).

Replay puts each original record back on its original topic **through the outbox**, so the one
active relay stays the only producer of that topic (Tansu can skip records with several).
A dead-lettered request had its unit released when it was parked, so replaying it first reserves
a unit again at the gate: only then is it re-published, and "OK means issued" keeps holding for
everyone admitted meanwhile. If no unit is left, it stays dead-lettered and the report says why.
Records that are no request of ours (malformed, poison, already decided) are re-published as they
were; issuing is idempotent per request id, and a malformed one simply comes back to the DLQ.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from couponrush.service.clock import Clock, utcnow
from couponrush.service.dead_letters import parse_request
from couponrush.service.ports import DeadLetterLedger, Gate, GateState, InboundRecord, OutboundMessage

log = logging.getLogger(__name__)

# Headers the worker adds when parking; a replay strips them from the re-published record.
DLQ_HEADER_PREFIX = "dlq-"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One parked record, as an operator sees it."""

    offset: int
    original_topic: str
    original_partition: int | None
    original_offset: int | None
    reason: str
    error: str
    attempts: int
    request_id: str | None
    key: str | None
    payload: bytes
    headers: Mapping[str, str]

    @classmethod
    def of(cls, record: InboundRecord) -> DeadLetter:
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers.items()}

        def number(name: str) -> int | None:
            value = headers.get(name, "")
            return int(value) if value.lstrip("-").isdigit() else None

        return cls(
            offset=record.offset,
            original_topic=headers.get("dlq-original-topic", record.topic.removesuffix(".dlq")),
            original_partition=number("dlq-original-partition"),
            original_offset=number("dlq-original-offset"),
            reason=headers.get("dlq-reason", "?"),
            error=headers.get("dlq-error", ""),
            attempts=number("dlq-attempts") or 1,
            request_id=headers.get("request-id"),
            key=None if record.key is None else record.key.decode("utf-8", "replace"),
            payload=record.value or b"",
            headers=headers,
        )

    def original_message(self) -> OutboundMessage:
        headers = {k: v for k, v in self.headers.items() if not k.startswith(DLQ_HEADER_PREFIX)}
        headers["dlq-replayed-from"] = str(self.offset)
        return OutboundMessage(topic=self.original_topic, key=self.key, payload=self.payload, headers=headers)


class Requeue(Protocol):
    async def enqueue(self, message: OutboundMessage) -> None:
        """Queue a message for the relay (the outbox)."""
        ...


@dataclass
class ReplayReport:
    republished: list[DeadLetter] = field(default_factory=list)
    # (dead letter, why it was not replayed)
    kept: list[tuple[DeadLetter, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeadLetterReplay:
    gate: Gate
    ledger: DeadLetterLedger
    requeue: Requeue
    clock: Clock = field(default=utcnow)

    async def replay(self, records: Sequence[InboundRecord]) -> ReplayReport:
        report = ReplayReport()
        for record in records:
            letter = DeadLetter.of(record)
            event = parse_request(record)
            if event is not None and await self.ledger.revive(event.request_id):
                verdict = await self.gate.admit(event.coupon_id, event.user_id, event.request_id, self.clock())
                if verdict.state is not GateState.ADMITTED:
                    why = verdict.reason.value if verdict.reason is not None else verdict.state.value
                    await self.ledger.mark_dead_lettered(event.request_id, f"replay refused at the gate: {why}")
                    report.kept.append((letter, why))
                    continue
            await self.requeue.enqueue(letter.original_message())
            report.republished.append(letter)
        log.info("replayed %d dead letter(s); kept %d", len(report.republished), len(report.kept))
        return report
