"""In-memory stand-ins for the ports, for handler tests that run in milliseconds."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import (
    Coupon,
    IssueOutcome,
    NewCoupon,
    RejectReason,
    RequestStatus,
    UserCoupon,
)
from couponrush.service.ports import GateState, GateVerdict, InboundRecord, OutboundMessage, OutboxRow


@dataclass
class FakeGate:
    flags: dict[int, bool] = field(default_factory=dict)
    reasons: dict[int, RejectReason] = field(default_factory=dict)
    closes: list[tuple[int, RejectReason]] = field(default_factory=list)
    fail_closes: int = 0

    async def check(self, coupon_id: int, now: datetime) -> GateVerdict:
        if coupon_id not in self.flags:
            return GateVerdict(GateState.MISSING)
        if self.flags[coupon_id]:
            return GateVerdict(GateState.OPEN)
        return GateVerdict(GateState.CLOSED, self.reasons.get(coupon_id, RejectReason.SOLD_OUT))

    async def sync(self, coupon: Coupon, now: datetime, *, only_if_missing: bool = False) -> None:
        if only_if_missing and coupon.id in self.flags:
            return
        reason = coupon.closed_reason(now)
        self.flags[coupon.id] = reason is None
        if reason is not None:
            self.reasons[coupon.id] = reason

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        if self.fail_closes > 0:
            self.fail_closes -= 1
            raise ConnectionError("redis is away")
        self.flags[coupon_id] = False
        self.reasons[coupon_id] = reason
        self.closes.append((coupon_id, reason))


@dataclass
class FakeCoupons:
    coupons: dict[int, Coupon] = field(default_factory=dict)
    held: list[UserCoupon] = field(default_factory=list)

    async def create(self, new: NewCoupon) -> Coupon:
        coupon = Coupon(
            id=len(self.coupons) + 1,
            name=new.name,
            discount_rate=new.discount_rate,
            quantity=new.quantity,
            issued_count=0,
            status=new.status,
            expired_at=new.expired_at,
        )
        self.coupons[coupon.id] = coupon
        return coupon

    async def get(self, coupon_id: int) -> Coupon | None:
        return self.coupons.get(coupon_id)

    async def held_by(self, user_id: int) -> list[UserCoupon]:
        return [h for h in self.held if h.user_id == user_id]


@dataclass
class FakeRequestLog:
    accepted: list[PublishRequested] = field(default_factory=list)
    fail: bool = False

    async def record_accepted(self, event: PublishRequested) -> None:
        if self.fail:
            raise ConnectionError("database is away")
        self.accepted.append(event)


@dataclass
class FakeIssuer:
    """The issuing rules over an in-memory store, with the same idempotency as the real one."""

    coupons: FakeCoupons
    decided: dict[str, IssueOutcome] = field(default_factory=dict)
    failures_left: int = 0

    async def issue(self, event: PublishRequested, now: datetime) -> IssueOutcome:
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("database is away")
        if event.request_id in self.decided:
            return dataclasses.replace(self.decided[event.request_id], replayed=True)
        coupon = self.coupons.coupons.get(event.coupon_id)
        if coupon is None:
            reason: RejectReason | None = RejectReason.UNKNOWN_COUPON
        else:
            holds = any(h.user_id == event.user_id and h.coupon_id == coupon.id for h in self.coupons.held)
            reason = coupon.issue_decision(already_holds=holds, now=now)
        if coupon is not None and reason is None:
            coupon = coupon.after_issuing_one()
            self.coupons.coupons[coupon.id] = coupon
            self.coupons.held.append(
                UserCoupon(coupon.id, event.user_id, coupon.name, coupon.discount_rate, now, coupon.expired_at)
            )
        outcome = IssueOutcome(
            request_id=event.request_id,
            user_id=event.user_id,
            coupon_id=event.coupon_id,
            status=RequestStatus.ISSUED if reason is None else RequestStatus.REJECTED,
            reason=reason,
            coupon=coupon,
        )
        self.decided[event.request_id] = outcome
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

    async def park(self, record: InboundRecord, reason: str, error: str) -> None:
        self.parked.append((record, reason, error))


@dataclass
class FakeOutbox:
    rows: dict[int, OutboxRow] = field(default_factory=dict)
    sent: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    def add(self, message: OutboundMessage) -> None:
        row_id = len(self.rows) + 1
        self.rows[row_id] = OutboxRow(row_id, message, 0)

    async def unsent(self, limit: int) -> list[OutboxRow]:
        return [r for i, r in sorted(self.rows.items()) if i not in self.sent][:limit]

    async def mark_sent(self, ids: Sequence[int]) -> None:
        self.sent.extend(ids)

    async def mark_failed(self, failures: Mapping[int, str]) -> None:
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
