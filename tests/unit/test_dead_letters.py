"""Bounded retries for a bad record, endless patience for an absent database, and the unit given back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import Coupon, CouponStatus, NewCoupon
from couponrush.service.dead_letters import ReleasingDeadLetters, RetryPolicy
from couponrush.service.issuing import IssuingService
from couponrush.service.ports import InboundRecord
from couponrush.service.worker import Worker
from tests.support.fakes import FakeCoupons, FakeDeadLetters, FakeGate, FakeIssuer, FakeLedger, FakeSource

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FAST = RetryPolicy(max_attempts=3, base_backoff_s=0.001, max_backoff_s=0.004)


def record(offset: int, request_id: str, user_id: int) -> InboundRecord:
    value = PublishRequested(request_id=request_id, user_id=user_id, coupon_id=1, requested_at=NOW).to_json()
    return InboundRecord(topic="requests", partition=2, offset=offset, key=b"1", value=value, headers={})


class Boom(Exception):
    """A bug that processing this record triggers every time."""


async def stocked(quantity: int) -> tuple[FakeCoupons, Coupon]:
    coupons = FakeCoupons()
    coupon = await coupons.create(
        NewCoupon("c", Decimal("0.1"), quantity, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1))
    )
    return coupons, coupon


async def drain(worker: Worker, source: FakeSource) -> None:
    stop = asyncio.Event()

    async def stop_when_drained() -> None:
        await source.drained.wait()
        stop.set()

    await asyncio.wait_for(asyncio.gather(worker.run(stop), stop_when_drained()), 5)


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    policy = RetryPolicy(base_backoff_s=0.1, max_backoff_s=1.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5, 9)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert not policy.gives_up(4)
    assert policy.gives_up(5)


async def test_a_record_that_keeps_failing_is_dead_lettered_after_bounded_attempts_and_its_unit_released() -> None:
    coupons, coupon = await stocked(5)
    gate = FakeGate()
    await gate.open(coupon, NOW, created=True)
    for user, request_id in ((7, "r1"), (8, "r2")):
        await gate.admit(1, user, request_id, NOW)
    issuer = FakeIssuer(coupons)
    calls: list[str] = []

    def fail_r1(event: PublishRequested) -> None:
        calls.append(event.request_id)
        if event.request_id == "r1":
            raise Boom("cannot process r1")

    issuer.refuse = fail_r1
    inner = FakeDeadLetters()
    ledger = FakeLedger(pending={"r1", "r2"})
    source = FakeSource([[record(40, "r1", 7), record(41, "r2", 8)]])
    worker = Worker(
        source=source,
        issuing=IssuingService(issuer=issuer, gate=gate, clock=lambda: NOW),
        dead_letters=ReleasingDeadLetters(inner=inner, gate=gate, ledger=ledger),
        retry=FAST,
    )
    await drain(worker, source)

    # Bounded: the batch's one try, then exactly max_attempts tries of that record on its own.
    assert calls.count("r1") == 1 + FAST.max_attempts
    assert [(r.offset, reason) for r, reason, _ in inner.parked] == [(40, "FAILED")]
    assert inner.attempts == [3]
    assert "Boom: cannot process r1" in inner.parked[0][2]
    assert ledger.dead == {"r1"}
    assert 7 not in gate.holders[1]  # r1's unit went back ...
    assert gate.stock[1] == 4  # ... while r2's (issued) stays taken
    assert [h.user_id for h in coupons.held] == [8]
    assert [r.offset for r in source.committed[0]] == [40, 41]


async def test_the_database_being_away_is_retried_beyond_the_bound_and_never_dead_lettered() -> None:
    coupons, _ = await stocked(5)
    issuer = FakeIssuer(coupons, failures_left=FAST.max_attempts * 3)  # ConnectionError each time
    dead = FakeDeadLetters()
    source = FakeSource([[record(0, "r1", 7)]])
    worker = Worker(
        source=source,
        issuing=IssuingService(issuer=issuer, gate=FakeGate(), clock=lambda: NOW),
        dead_letters=dead,
        retry=FAST,
    )
    await drain(worker, source)
    assert dead.parked == []
    assert [h.user_id for h in coupons.held] == [7]


async def test_a_request_no_longer_pending_is_parked_but_releases_nothing() -> None:
    _, coupon = await stocked(5)
    gate = FakeGate()
    await gate.open(coupon, NOW, created=True)
    await gate.admit(1, 7, "r1", NOW)
    letters = ReleasingDeadLetters(inner=FakeDeadLetters(), gate=gate, ledger=FakeLedger(pending=set()))
    assert await letters.park(record(0, "r1", 7), "FAILED", "x", asyncio.Event(), attempts=2)
    assert gate.holders[1] == {7: "r1"}  # e.g. already issued: its unit is rightly held
