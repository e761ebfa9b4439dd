"""What the service layer needs from the outside world. Adapters implement these; tests fake them."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import (
    Coupon,
    CouponState,
    CouponStatus,
    GateSnapshot,
    IssueOutcome,
    NewCoupon,
    RejectReason,
    RequestStatus,
    RequestView,
    UserCoupon,
)
from couponrush.domain.topic_versions import TopicVersion


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    topic: str
    key: str | None
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    # None: the partitioner picks it from the key. Set only for per-partition markers (topic versions).
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    # An outbox row's id, or the request id of a recorded request (its row is its event's outbox entry).
    id: int | str
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
    # Let through. A reserving gate has also reserved one unit for this request.
    ADMITTED = "ADMITTED"
    CLOSED = "CLOSED"
    # This user already holds the coupon or has a request for it pending (reserving gate only).
    DUPLICATE = "DUPLICATE"
    # Redis has nothing for this coupon: never opened, unknown, or Redis lost its data.
    MISSING = "MISSING"
    # The gate of this coupon is being rebuilt from the database: try again shortly.
    REBUILDING = "REBUILDING"


@dataclass(frozen=True, slots=True)
class GateVerdict:
    state: GateState
    reason: RejectReason | None = None
    # A scheduled coupon refused NOT_OPEN: when it opens, and how long until then by the gate's own clock.
    opens_at: datetime | None = None
    opens_in_s: float | None = None


class TermsOutcome(enum.Enum):
    APPLIED = "APPLIED"
    # Redis has no state for this coupon, or it is being rebuilt: nothing was written.
    MISSING = "MISSING"
    REBUILDING = "REBUILDING"
    # More units are reserved (issued or pending, or being recorded) than the quantity asked for.
    BELOW_HOLDERS = "BELOW_HOLDERS"


@dataclass(frozen=True, slots=True)
class GateTerms:
    outcome: TermsOutcome
    holders: int = 0  # units reserved at the gate when it answered (issued + pending + in flight)


class GateUnreachable(Exception):
    """The gate's store could not be reached at all: nothing ran, so nothing was reserved."""


class Gate(Protocol):
    """The fast admission check in front of the pipeline (Redis): admitting reserves one unit for the request."""

    async def admit(self, coupon_id: int, user_id: int, request_id: str, now: datetime) -> GateVerdict:
        """Raises ``GateUnreachable`` when certainly nothing ran; any other failure may have reserved."""
        ...

    async def release(self, coupon_id: int, user_id: int, request_id: str) -> None:
        """Give back the unit reserved for exactly this request (no-op if it holds none)."""
        ...

    async def open(self, coupon: Coupon, now: datetime, *, created: bool = False) -> bool:
        """Let the gate follow the coupon (just created, or reopened). False when its state must be rebuilt first."""
        ...

    async def close(self, coupon_id: int, reason: RejectReason) -> None: ...

    async def set_terms(self, coupon: Coupon) -> GateTerms:
        """Make the gate admit by the coupon's quantity, expiry and opening time, atomically: refused
        (BELOW_HOLDERS, nothing written) when more units are reserved than that quantity."""
        ...

    async def missing(self, coupon_ids: Sequence[int]) -> list[int]:
        """Those coupons the gate holds no state for (never opened here, or Redis lost it)."""
        ...

    async def begin_rebuild(self, coupon_id: int, token: str, now: datetime, lease_s: float) -> bool:
        """Stop admitting to this coupon until finish_rebuild. False if another rebuild holds it."""
        ...

    async def finish_rebuild(self, coupon_id: int, token: str, snapshot: GateSnapshot, now: datetime) -> bool: ...

    async def abort_rebuild(self, coupon_id: int, token: str) -> None:
        """Lift this rebuild's fence (the gate goes back to what it held, or to missing)."""
        ...

    async def unconfirmed(self, coupon_id: int, reserved_before: datetime, limit: int) -> list[tuple[int, str]]:
        """(user id, request id) reserved before that moment and not yet confirmed as recorded (or released)."""
        ...

    async def confirm(self, coupon_id: int, reservations: Sequence[tuple[int, str]]) -> None:
        """These reservations are settled (recorded, or released): stop reporting them as unconfirmed."""
        ...


class GateSnapshots(Protocol):
    async def snapshot(self, coupon_id: int) -> GateSnapshot | None: ...

    async def open_coupon_ids(self, now: datetime) -> list[int]: ...

    async def rejected(self, request_ids: Sequence[str]) -> list[tuple[int, int, str]]:
        """(coupon_id, user_id, request_id) of those requests that were refused."""
        ...

    async def newly_expired(self, since: datetime, now: datetime) -> list[int]:
        """Publishable coupons whose expiry falls in (since, now]."""
        ...


class StuckRequests(Protocol):
    async def redrive_stuck(self, older_than_s: float, limit: int) -> int:
        """Queue again the events of requests pending longer than ``older_than_s``; returns how many."""
        ...


class RequestStatusStore(Protocol):
    async def latest(self, user_id: int, coupon_id: int) -> RequestView | None: ...


class CouponStore(Protocol):
    async def create(self, new: NewCoupon, *, actor: str = "system") -> Coupon:
        """Create it and record the change (action CREATE), in one transaction."""
        ...

    async def get(self, coupon_id: int) -> Coupon | None: ...

    async def held_by(self, user_id: int) -> list[UserCoupon]: ...

    async def set_status(self, coupon_id: int, status: CouponStatus, *, actor: str = "system") -> Coupon | None:
        """Set it and record the change (OPEN/CLOSE), in one transaction; None for an unknown coupon."""
        ...

    def changing(self, coupon_id: int) -> AbstractAsyncContextManager[CouponChange | None]:
        """Change one coupon: None for an unknown coupon. Changes of one coupon are serialized from
        entering to leaving (the gate is written inside, after the database commit too); what ``save``
        wrote is committed when the block ends without an exception."""
        ...


class CouponChange(Protocol):
    """One coupon being changed (see ``CouponStore.changing``)."""

    @property
    def coupon(self) -> Coupon: ...

    @property
    def pending(self) -> int:
        """Its accepted requests not yet decided (dead letters aside): each holds a unit."""
        ...

    async def save(self, after: Coupon, *, actor: str, action: str) -> Coupon:
        """Store ``after``'s name, quantity, expiry and opening time, with the change record; commits."""
        ...


@dataclass(frozen=True, slots=True)
class CouponSummary:
    """A coupon with its derived state, as operators list it."""

    coupon: Coupon
    pending: int
    state: CouponState

    @property
    def available(self) -> int:
        """Units a request can still get: neither issued nor held by a pending request."""
        return max(0, self.coupon.quantity - self.coupon.issued_count - self.pending)


@dataclass(frozen=True, slots=True)
class Holder:
    user_id: int
    request_id: str
    issued_at: datetime
    row_id: int  # the pagination key, with issued_at


@dataclass(frozen=True, slots=True)
class RequestRow:
    request_id: str
    user_id: int
    coupon_id: int
    status: RequestStatus
    reason: RejectReason | None
    requested_at: datetime
    decided_at: datetime | None
    redrives: int
    dead_lettered_at: datetime | None


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    id: int
    coupon_id: int
    changed_at: datetime
    actor: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any]


class CouponListings(Protocol):
    """What operators read page by page (keyset pagination: ``after`` is the last row's key, exclusive)."""

    async def summaries(
        self, states: Sequence[CouponState], before_id: int | None, limit: int, now: datetime
    ) -> list[CouponSummary]:
        """Newest first (id descending), only those in ``states`` (all when empty)."""
        ...

    async def summary(self, coupon_id: int, now: datetime) -> CouponSummary | None: ...

    async def holders(self, coupon_id: int, after: tuple[datetime, int] | None, limit: int) -> list[Holder]:
        """In issue order."""
        ...

    async def requests(
        self,
        coupon_id: int,
        after: tuple[datetime, str] | None,
        limit: int,
        statuses: Sequence[RequestStatus] = (),
    ) -> list[RequestRow]:
        """Accepted requests in arrival order, only those in ``statuses`` (all when empty)."""
        ...

    async def changes(self, coupon_id: int, after_id: int | None, limit: int) -> list[ChangeRecord]:
        """Oldest first."""
        ...


class NotRecorded(Exception):
    """Recording an accepted request failed, and it is certain that nothing was recorded."""


class RequestLog(Protocol):
    async def record_accepted(self, event: PublishRequested) -> None:
        """Durably record an accepted request and its outbox event, atomically, within a bounded time.

        Raises ``NotRecorded`` when certainly nothing was recorded; any other exception leaves it
        unknown (e.g. the connection died during COMMIT), and the caller must ask ``exists``.
        """
        ...

    async def exists(self, request_id: str) -> bool: ...


class Issuer(Protocol):
    async def issue_batch(self, events: Sequence[PublishRequested], now: datetime) -> list[IssueOutcome]:
        """Decide and record every event in one transaction, in order: the outcome of issuing them singly
        in that order, one outcome per event (a repeated request id is a replay). Idempotent per request id.
        """
        ...


class OutboxStore(Protocol):
    async def unsent(self, limit: int) -> list[OutboxRow]: ...

    async def mark_sent(self, ids: Sequence[int | str]) -> None: ...

    async def mark_failed(self, failures: Mapping[int | str, str]) -> None: ...

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


class UnprocessableEvent(Exception):
    """Processing this event can never succeed (the database refuses its data): park it, don't retry."""


class DeadLetters(Protocol):
    async def park(
        self, record: InboundRecord, reason: str, error: str, stop: asyncio.Event, *, attempts: int = 1
    ) -> bool:
        """Put the record on its dead-letter topic; False if ``stop`` was set before it was acknowledged."""
        ...


class DeadLetterLedger(Protocol):
    """Where the database remembers which accepted requests were dead-lettered."""

    async def mark_dead_lettered(self, request_id: str, error: str) -> bool:
        """Mark a still-pending request dead-lettered; True if it was pending (its unit may be released)."""
        ...

    async def revive(self, request_id: str) -> bool:
        """Clear the mark before a replay; True if the request is pending and was dead-lettered."""
        ...


@dataclass(frozen=True, slots=True)
class OutboxState:
    backlog: int
    oldest_age_s: float


@dataclass(frozen=True, slots=True)
class Undecided:
    """The oldest accepted request not yet issued or refused (dead letters aside: they are parked)."""

    request_id: str
    coupon_id: int
    age_s: float


@dataclass(frozen=True, slots=True)
class CouponProgress:
    """Where one coupon's drop stands, from the database."""

    coupon_id: int
    quantity: int
    issued: int
    pending: int  # accepted, not yet decided
    unsent: int = 0  # of those, still in the outbox (not yet on Kafka)


class OperationsReader(Protocol):
    """What operators read: metrics at scrape time, ``couponrush coupons list`` and ``couponrush stats``."""

    async def outbox_state(self) -> OutboxState: ...

    async def oldest_undecided(self) -> Undecided | None: ...

    async def open_coupon_progress(self, limit: int) -> list[CouponProgress]: ...

    async def coupon_progress(self, coupon_id: int) -> CouponProgress | None: ...

    async def list_coupons(self, limit: int) -> list[Coupon]: ...


# --- topic versions (see service/topic_versions.py) ---


class TopicVersionStore(Protocol):
    """Where each topic family's versions stand (PostgreSQL)."""

    async def versions(self, family: str) -> list[TopicVersion]: ...

    async def request(self, current: TopicVersion | None, new: TopicVersion) -> None:
        """Record ``new`` as PENDING (and ``current`` as the ACTIVE version if none is recorded yet)."""
        ...

    async def switch(self, family: str, old_version: int, new_version: int) -> None:
        """Atomically: ``old`` ACTIVE -> DRAINING, ``new`` PENDING -> ACTIVE."""
        ...

    async def markers_written(self, family: str, version: int) -> None:
        """The switch markers of this DRAINING version are on every partition."""
        ...

    async def mark_drained(self, family: str, version: int, partition: int, marker_offset: int) -> bool:
        """This partition is consumed past its marker; True once every partition of the version is."""
        ...

    async def retire(self, family: str, version: int) -> None: ...


class TopicSink(EventSink, Protocol):
    def add_topic(self, topic: str, partitions: int) -> None:
        """Also keep this topic in existence (re-created if the broker lost it) from now on."""
        ...


class SubscribingSource(RecordSource, Protocol):
    async def subscribe(self, topics: Mapping[str, int]) -> None:
        """Consume exactly these topics from now on (creating them if missing)."""
        ...


class TopicAdmin(Protocol):
    async def create(self, topics: Mapping[str, int]) -> None: ...

    async def partitions(self, topic: str) -> int | None:
        """Partition count of ``topic``, None if it does not exist."""
        ...

    async def delete(self, topic: str) -> None: ...
