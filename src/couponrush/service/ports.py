"""What the service layer needs from the outside world. Adapters implement these; tests fake them."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import Coupon, IssueOutcome, NewCoupon, RejectReason, UserCoupon


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    topic: str
    key: str | None
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    message: OutboundMessage
    attempts: int


@dataclass(frozen=True, slots=True)
class InboundRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes]


class GateState(enum.Enum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"
    # Redis has nothing for this coupon: never opened, unknown, or Redis lost its data.
    MISSING = "MISSING"


@dataclass(frozen=True, slots=True)
class GateVerdict:
    state: GateState
    reason: RejectReason | None = None


class Gate(Protocol):
    """The fast admission check in front of the pipeline (Redis)."""

    async def check(self, coupon_id: int, now: datetime) -> GateVerdict: ...

    async def sync(self, coupon: Coupon, now: datetime, *, only_if_missing: bool = False) -> None:
        """Make the gate say what the database says of this coupon."""
        ...

    async def close(self, coupon_id: int, reason: RejectReason) -> None: ...


class CouponStore(Protocol):
    async def create(self, new: NewCoupon) -> Coupon: ...

    async def get(self, coupon_id: int) -> Coupon | None: ...

    async def held_by(self, user_id: int) -> list[UserCoupon]: ...


class RequestLog(Protocol):
    async def record_accepted(self, event: PublishRequested) -> None:
        """Durably record an accepted request and its outbox event, atomically."""
        ...


class Issuer(Protocol):
    async def issue(self, event: PublishRequested, now: datetime) -> IssueOutcome:
        """Decide and record one request in one transaction. Idempotent per request id."""
        ...


class OutboxStore(Protocol):
    async def unsent(self, limit: int) -> list[OutboxRow]: ...

    async def mark_sent(self, ids: Sequence[int]) -> None: ...

    async def mark_failed(self, failures: Mapping[int, str]) -> None: ...

    async def wait_for_rows(self, timeout: float) -> None: ...


class EventSink(Protocol):
    async def send_all(self, messages: Sequence[OutboundMessage]) -> list[str | None]:
        """Send and await the broker's acknowledgement of each; None for acked, else the error."""
        ...


class RecordSource(Protocol):
    async def next_batch(self, max_records: int, timeout: float) -> list[InboundRecord]: ...

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Commit the consumed position past each of these records."""
        ...


class DeadLetters(Protocol):
    async def park(self, record: InboundRecord, reason: str, error: str) -> None: ...
