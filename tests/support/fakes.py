"""In-memory stand-ins for the ports, for handler tests that run in milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from couponrush.domain.events import PublishRequested
from couponrush.domain.issuing import RecordedRequest, settle, status_of
from couponrush.domain.model import (
    Coupon,
    CouponStatus,
    GateSnapshot,
    IssueOutcome,
    NewCoupon,
    RejectReason,
    RequestStatus,
    UserCoupon,
)
from couponrush.service.issuing import IssuingService
from couponrush.service.ports import (
    GateState,
    GateTerms,
    GateVerdict,
    InboundRecord,
    Issuer,
    OutboundMessage,
    OutboxRow,
    TermsOutcome,
)


@dataclass
class FakeGate:
    """An in-memory reserving gate with the same rules as the Lua one."""

    open_: dict[int, bool] = field(default_factory=dict)
    reasons: dict[int, RejectReason] = field(default_factory=dict)
    expires: dict[int, datetime] = field(default_factory=dict)
    stock: dict[int, int] = field(default_factory=dict)
    holders: dict[int, dict[int, str]] = field(default_factory=dict)
    rebuilding: dict[int, str] = field(default_factory=dict)
    closes: list[tuple[int, RejectReason]] = field(default_factory=list)
    fail_closes: int = 0
    # Reserved and not yet confirmed recorded: (coupon, user, request) -> when.
    fresh: dict[tuple[int, int, str], datetime] = field(default_factory=dict)
    opens: dict[int, datetime | None] = field(default_factory=dict)
    quantity: dict[int, int] = field(default_factory=dict)
    # The Redis server's clock, which judges opening times (None: the caller's ``now``).
    server_clock: Callable[[], datetime] | None = None
    # Every set_terms call, in order (what the gate was told and when).
    terms: list[Coupon] = field(default_factory=list)
    fail_terms: int = 0

    def forget(self, coupon_id: int) -> None:
        """What a Redis flush does to one coupon."""
        for state in (self.open_, self.reasons, self.expires, self.stock, self.holders, self.rebuilding, self.opens):
            state.pop(coupon_id, None)
        self.quantity.pop(coupon_id, None)
        self.fresh = {k: v for k, v in self.fresh.items() if k[0] != coupon_id}

    async def admit(self, coupon_id: int, user_id: int, request_id: str, now: datetime) -> GateVerdict:
        if coupon_id in self.rebuilding:
            return GateVerdict(GateState.REBUILDING)
        if coupon_id not in self.open_:
            return GateVerdict(GateState.MISSING)
        if not self.open_[coupon_id]:
            return GateVerdict(GateState.CLOSED, self.reasons.get(coupon_id, RejectReason.NOT_OPEN))
        if now >= self.expires[coupon_id]:
            return GateVerdict(GateState.CLOSED, RejectReason.EXPIRED)
        opens_at = self.opens.get(coupon_id)
        server_now = self.server_clock() if self.server_clock else now
        if opens_at is not None and server_now < opens_at:
            wait = (opens_at - server_now).total_seconds()
            return GateVerdict(GateState.CLOSED, RejectReason.NOT_OPEN, opens_at=opens_at, opens_in_s=wait)
        if user_id in self.holders[coupon_id]:
            return GateVerdict(GateState.DUPLICATE)
        if self.stock[coupon_id] <= 0:
            return GateVerdict(GateState.CLOSED, RejectReason.SOLD_OUT)
        self.holders[coupon_id][user_id] = request_id
        self.stock[coupon_id] -= 1
        self.fresh[(coupon_id, user_id, request_id)] = now
        return GateVerdict(GateState.ADMITTED)

    async def release(self, coupon_id: int, user_id: int, request_id: str) -> None:
        if coupon_id in self.rebuilding or coupon_id not in self.open_:
            return
        self.fresh.pop((coupon_id, user_id, request_id), None)
        if self.holders[coupon_id].get(user_id) == request_id:
            del self.holders[coupon_id][user_id]
            self.stock[coupon_id] += 1

    async def open(self, coupon: Coupon, now: datetime, *, created: bool = False) -> bool:
        if not created and coupon.id not in self.open_:
            return False
        if created:
            self.stock[coupon.id] = coupon.quantity
            self.quantity[coupon.id] = coupon.quantity
            self.holders[coupon.id] = {}
            self.expires[coupon.id] = coupon.expired_at
            self.opens[coupon.id] = coupon.opens_at
        self.open_[coupon.id] = coupon.status is CouponStatus.PUBLISHABLE
        return True

    async def set_terms(self, coupon: Coupon) -> GateTerms:
        if self.fail_terms > 0:
            self.fail_terms -= 1
            raise ConnectionError("redis is away")
        if coupon.id in self.rebuilding:
            return GateTerms(TermsOutcome.REBUILDING)
        if coupon.id not in self.open_:
            return GateTerms(TermsOutcome.MISSING)
        held = len(self.holders[coupon.id])
        if coupon.quantity < held:
            return GateTerms(TermsOutcome.BELOW_HOLDERS, held)
        self.terms.append(coupon)
        self.quantity[coupon.id] = coupon.quantity
        self.stock[coupon.id] = coupon.quantity - held
        self.expires[coupon.id] = coupon.expired_at
        self.opens[coupon.id] = coupon.opens_at
        return GateTerms(TermsOutcome.APPLIED, held)

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        if self.fail_closes > 0:
            self.fail_closes -= 1
            raise ConnectionError("redis is away")
        if reason is RejectReason.NOT_OPEN and coupon_id in self.open_:
            self.open_[coupon_id] = False
            self.reasons[coupon_id] = reason
        self.closes.append((coupon_id, reason))

    async def missing(self, coupon_ids: Sequence[int]) -> list[int]:
        return [c for c in coupon_ids if c not in self.open_]

    async def unconfirmed(self, coupon_id: int, reserved_before: datetime, limit: int) -> list[tuple[int, str]]:
        old = sorted((at, u, r) for (c, u, r), at in self.fresh.items() if c == coupon_id and at < reserved_before)
        return [(u, r) for _, u, r in old[:limit]]

    async def confirm(self, coupon_id: int, reservations: Sequence[tuple[int, str]]) -> None:
        for user_id, request_id in reservations:
            self.fresh.pop((coupon_id, user_id, request_id), None)

    async def begin_rebuild(self, coupon_id: int, token: str, now: datetime, lease_s: float) -> bool:
        if self.rebuilding.get(coupon_id, token) != token:
            return False
        self.rebuilding[coupon_id] = token
        return True

    async def abort_rebuild(self, coupon_id: int, token: str) -> None:
        if self.rebuilding.get(coupon_id) == token:
            del self.rebuilding[coupon_id]

    async def finish_rebuild(self, coupon_id: int, token: str, snapshot: GateSnapshot, now: datetime) -> bool:
        if self.rebuilding.get(coupon_id) != token:
            return False
        del self.rebuilding[coupon_id]
        coupon = snapshot.coupon
        self.open_[coupon_id] = coupon.status is CouponStatus.PUBLISHABLE
        self.expires[coupon_id] = coupon.expired_at
        self.opens[coupon_id] = coupon.opens_at
        self.quantity[coupon_id] = coupon.quantity
        self.holders[coupon_id] = dict(snapshot.reservations)
        self.stock[coupon_id] = snapshot.stock
        self.fresh = {k: v for k, v in self.fresh.items() if k[0] != coupon_id}
        return True


@dataclass
class FakeChange:
    store: FakeCoupons
    coupon: Coupon
    pending: int

    async def save(self, after: Coupon, *, actor: str, action: str) -> Coupon:
        if self.store.fail_saves > 0:
            self.store.fail_saves -= 1
            raise ConnectionError("database is away")
        if after.issued_count > after.quantity:
            raise ValueError("coupons_issued_within_quantity")
        self.store.coupons[after.id] = after
        self.store.changes.append((after.id, actor, action, self.coupon, after))
        return after


@dataclass
class FakeCoupons:
    coupons: dict[int, Coupon] = field(default_factory=dict)
    held: list[UserCoupon] = field(default_factory=list)
    # coupon id -> its pending requests (what ``changing`` reports)
    pending: dict[int, int] = field(default_factory=dict)
    # (coupon id, actor, action, before, after) of every change
    changes: list[tuple[int, str, str, Coupon | None, Coupon]] = field(default_factory=list)
    fail_saves: int = 0

    async def create(self, new: NewCoupon, *, actor: str = "system") -> Coupon:
        coupon = Coupon(
            id=len(self.coupons) + 1,
            name=new.name,
            discount_rate=new.discount_rate,
            quantity=new.quantity,
            issued_count=0,
            status=new.status,
            expired_at=new.expired_at,
            opens_at=new.opens_at,
        )
        self.coupons[coupon.id] = coupon
        self.changes.append((coupon.id, actor, "CREATE", None, coupon))
        return coupon

    async def get(self, coupon_id: int) -> Coupon | None:
        return self.coupons.get(coupon_id)

    async def held_by(self, user_id: int) -> list[UserCoupon]:
        return [h for h in self.held if h.user_id == user_id]

    async def set_status(self, coupon_id: int, status: CouponStatus, *, actor: str = "system") -> Coupon | None:
        coupon = self.coupons.get(coupon_id)
        if coupon is None:
            return None
        self.coupons[coupon_id] = dataclasses.replace(coupon, status=status)
        action = "OPEN" if status is CouponStatus.PUBLISHABLE else "CLOSE"
        self.changes.append((coupon_id, actor, action, coupon, self.coupons[coupon_id]))
        return self.coupons[coupon_id]

    @contextlib.asynccontextmanager
    async def changing(self, coupon_id: int) -> AsyncIterator[FakeChange | None]:
        coupon = self.coupons.get(coupon_id)
        yield None if coupon is None else FakeChange(self, coupon, self.pending.get(coupon_id, 0))


@dataclass
class FakeRequestLog:
    accepted: list[PublishRequested] = field(default_factory=list)
    fail: bool = False

    fail_after_commit: bool = False
    unreachable: bool = False

    async def record_accepted(self, event: PublishRequested) -> None:
        if self.fail:
            raise ConnectionError("database is away")
        self.accepted.append(event)
        if self.fail_after_commit:
            raise TimeoutError("connection lost during COMMIT")

    async def exists(self, request_id: str) -> bool:
        if self.unreachable:
            raise ConnectionError("database is away")
        return any(e.request_id == request_id for e in self.accepted)


@dataclass
class FakeIssuer:
    """The issuing rules (``domain.issuing.settle``) over an in-memory store, idempotent like the real one."""

    coupons: FakeCoupons
    recorded: dict[str, RecordedRequest] = field(default_factory=dict)
    failures_left: int = 0
    # Called for each event before a batch is settled; what it raises fails the whole batch, as one
    # event the database refuses fails its transaction.
    refuse: Callable[[PublishRequested], None] | None = None

    batches: list[int] = field(default_factory=list)

    async def issue_batch(self, events: Sequence[PublishRequested], now: datetime) -> list[IssueOutcome]:
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("database is away")
        if self.refuse is not None:
            for event in events:
                self.refuse(event)
        self.batches.append(len(events))
        for e in events:
            self.recorded.setdefault(
                e.request_id, RecordedRequest(e.request_id, e.user_id, e.coupon_id, RequestStatus.PENDING, None)
            )
        holders = {(h.user_id, h.coupon_id) for h in self.coupons.held}
        settlement = settle(events, self.recorded, self.coupons.coupons, holders, now)
        for d in settlement.decisions:
            request = d.request
            self.recorded[request.request_id] = RecordedRequest(
                request.request_id, request.user_id, request.coupon_id, status_of(d), d.reason
            )
            coupon = d.coupon
            if d.issued and coupon is not None:
                self.coupons.coupons[coupon.id] = coupon
                self.coupons.held.append(
                    UserCoupon(coupon.id, request.user_id, coupon.name, coupon.discount_rate, now, coupon.expired_at)
                )
        return settlement.outcomes


async def issue_one(issuer: Issuer, event: PublishRequested, now: datetime) -> IssueOutcome:
    """A single delivery: a batch of one."""
    [outcome] = await issuer.issue_batch([event], now)
    return outcome


async def handle_one(service: IssuingService, event: PublishRequested) -> IssueOutcome:
    """A single delivery through the issuing service: a batch of one."""
    [outcome] = await service.handle_batch([event])
    return outcome


@dataclass
class FakeSource:
    """Hands out its batches in order; once asked past the last one, sets ``drained``."""

    batches: list[list[InboundRecord]]
    committed: list[list[InboundRecord]] = field(default_factory=list)
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    async def next_batch(self, max_records: int, timeout: float) -> list[InboundRecord]:
        if self.batches:
            return self.batches.pop(0)
        self.drained.set()
        await asyncio.sleep(0.001)  # an empty poll takes time, as a real one does
        return []

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        self.committed.append(list(records))


@dataclass
class FakeDeadLetters:
    parked: list[tuple[InboundRecord, str, str]] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)

    async def park(
        self, record: InboundRecord, reason: str, error: str, stop: asyncio.Event, *, attempts: int = 1
    ) -> bool:
        self.parked.append((record, reason, error))
        self.attempts.append(attempts)
        return True


@dataclass
class FakeLedger:
    """Which pending requests are dead-lettered (the coupon_requests.dead_lettered_at column)."""

    pending: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)

    async def mark_dead_lettered(self, request_id: str, error: str) -> bool:
        if request_id not in self.pending:
            return False
        self.dead.add(request_id)
        return True

    async def revive(self, request_id: str) -> bool:
        if request_id not in self.dead:
            return False
        self.dead.discard(request_id)
        return True


@dataclass
class FakeOutbox:
    rows: dict[int, OutboxRow] = field(default_factory=dict)
    sent: list[int | str] = field(default_factory=list)
    errors: dict[int | str, str] = field(default_factory=dict)

    def add(self, message: OutboundMessage) -> None:
        row_id = len(self.rows) + 1
        self.rows[row_id] = OutboxRow(row_id, message, 0)

    async def unsent(self, limit: int) -> list[OutboxRow]:
        return [r for i, r in sorted(self.rows.items()) if i not in self.sent][:limit]

    async def mark_sent(self, ids: Sequence[int | str]) -> None:
        self.sent.extend(ids)

    async def mark_failed(self, failures: Mapping[int | str, str]) -> None:
        self.errors.update(failures)

    async def wait_for_rows(self, timeout: float) -> None:
        return None


@dataclass
class FakeSink:
    """Acknowledges everything except the messages whose key is in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    delivered: list[OutboundMessage] = field(default_factory=list)

    async def send_all(self, messages: Sequence[OutboundMessage]) -> list[str | None]:
        results: list[str | None] = []
        for message in messages:
            if message.key in self.refuse:
                results.append("broker unavailable")
            else:
                self.delivered.append(message)
                results.append(None)
        return results


@dataclass
class FakeSnapshots:
    """The database's view for a rebuild: coupons, and requests with their outcome."""

    coupons: FakeCoupons
    requests: dict[str, tuple[int, int, RequestStatus]] = field(default_factory=dict)  # id -> coupon, user, status

    async def snapshot(self, coupon_id: int) -> GateSnapshot | None:
        coupon = self.coupons.coupons.get(coupon_id)
        if coupon is None:
            return None
        reservations = {
            user: request_id
            for request_id, (c, user, status) in self.requests.items()
            if c == coupon_id and status is not RequestStatus.REJECTED
        }
        return GateSnapshot(coupon, reservations)

    async def open_coupon_ids(self, now: datetime) -> list[int]:
        return [c.id for c in self.coupons.coupons.values() if c.is_open(now) or c.remaining_quantity == 0]

    async def rejected(self, request_ids: Sequence[str]) -> list[tuple[int, int, str]]:
        return [
            (self.requests[r][0], self.requests[r][1], r)
            for r in request_ids
            if r in self.requests and self.requests[r][2] is RequestStatus.REJECTED
        ]

    async def newly_expired(self, since: datetime, now: datetime) -> list[int]:
        return [c.id for c in self.coupons.coupons.values() if since < c.expired_at <= now]


@dataclass
class FakeFence:
    """The database's side of the orphan sweep: which requests are recorded; fencing records the rest."""

    recorded: set[str] = field(default_factory=set)
    fenced: set[str] = field(default_factory=set)

    async def fence_unrecorded(
        self, coupon_id: int, reservations: Sequence[tuple[int, str]], now: datetime
    ) -> set[str]:
        new = {r for _, r in reservations if r not in self.recorded and r not in self.fenced}
        self.fenced |= new
        return new
