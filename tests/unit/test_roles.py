"""The long-running roles on fakes: the relay's standby/active lock, the worker's start-up and schedule."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.model import CouponStatus, NewCoupon, RejectReason
from couponrush.roles.relay import RelayRole
from couponrush.roles.worker import WorkerRole
from couponrush.service.ports import OutboundMessage
from couponrush.service.reconcile import CouponReport
from tests.support.fakes import FakeCoupons, FakeFence, FakeGate, FakeOutbox, FakeSink, FakeSnapshots
from tests.support.polling import eventually


@dataclass
class FakeLock:
    """The relay lock: held by someone else until ``free`` is set; ``lose`` takes it away from us."""

    free: asyncio.Event = field(default_factory=asyncio.Event)
    lose: asyncio.Event = field(default_factory=asyncio.Event)
    tenures: int = 0
    fail_first: int = 0

    @contextlib.asynccontextmanager
    async def exclusive(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event | None]:
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionError("database is away")
        waiters = {asyncio.ensure_future(self.free.wait()), asyncio.ensure_future(stop.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if stop.is_set():
            yield None
            return
        self.tenures += 1
        lost = self.lose
        yield lost
        self.lose = asyncio.Event()


@dataclass
class RoutedSink(FakeSink):
    runs: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        await stop.wait()


@dataclass
class NoStuck:
    calls: int = 0

    async def redrive_stuck(self, older_than_s: float, limit: int) -> int:
        self.calls += 1
        return 0


def message(key: str) -> OutboundMessage:
    return OutboundMessage(topic="t", key=key, payload=b"{}")


async def test_a_relay_stands_by_while_another_holds_the_lock_and_stops_when_asked() -> None:
    lock, outbox, sink = FakeLock(), FakeOutbox(), RoutedSink()
    outbox.add(message("1"))
    role = RelayRole(lock=lock, outbox=outbox, new_sink=lambda: sink, stuck=NoStuck())
    stop = asyncio.Event()
    running = asyncio.create_task(role.run(stop))
    await asyncio.sleep(0.05)  # time passes while another relay holds the lock
    assert sink.delivered == []
    stop.set()
    await asyncio.wait_for(running, 2)
    assert lock.tenures == 0


async def test_the_relay_holding_the_lock_relays_and_re_acquires_after_losing_it() -> None:
    lock, outbox = FakeLock(), FakeOutbox()
    sinks: list[RoutedSink] = []

    def new_sink() -> RoutedSink:
        sinks.append(RoutedSink())
        return sinks[-1]

    stuck = NoStuck()
    role = RelayRole(lock=lock, outbox=outbox, new_sink=new_sink, stuck=stuck, idle_scan_s=0.01)
    outbox.add(message("1"))
    stop = asyncio.Event()
    lock.free.set()
    running = asyncio.create_task(role.run(stop))

    async def delivered() -> int:
        return sum(len(s.delivered) for s in sinks)

    await eventually(delivered, lambda n: n == 1, timeout=2, what="the first row relayed")
    assert stuck.calls >= 1  # the re-drive runs with the tenure
    lock.lose.set()  # the lock's connection dies: this tenure ends, a new one starts with a fresh sink
    outbox.add(message("2"))

    async def tenures() -> int:
        return lock.tenures

    await eventually(tenures, lambda n: n == 2, timeout=2, what="a second tenure")
    await eventually(delivered, lambda n: n == 2, timeout=2, what="the second row relayed")
    assert [s.runs for s in sinks] == [1, 1]
    stop.set()
    await asyncio.wait_for(running, 2)


async def test_a_failing_relay_tenure_is_retried_after_a_pause() -> None:
    lock, outbox, sink = FakeLock(fail_first=2), FakeOutbox(), RoutedSink()
    lock.free.set()
    outbox.add(message("1"))
    role = RelayRole(lock=lock, outbox=outbox, new_sink=lambda: sink, stuck=NoStuck(), retry_pause_s=0.01)
    stop = asyncio.Event()
    running = asyncio.create_task(role.run(stop))

    async def delivered() -> int:
        return len(sink.delivered)

    await eventually(delivered, lambda n: n == 1, timeout=2, what="relayed after two failed tenures")
    assert lock.fail_first == 0
    stop.set()
    await asyncio.wait_for(running, 2)


@dataclass
class Member:
    """A consumer-group member whose start fails ``away`` times (the broker not up yet)."""

    away: int = 0
    started: int = 0
    closed: int = 0

    async def start(self) -> None:
        if self.away > 0:
            self.away -= 1
            raise ConnectionError("broker not reachable")
        self.started += 1

    async def close(self) -> None:
        self.closed += 1


@dataclass
class Issuing:
    ran: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        self.ran.set()
        await stop.wait()


@dataclass
class Reconciles:
    passes: int = 0

    async def reconcile(self) -> list[CouponReport]:
        self.passes += 1
        return []


class NoLag:
    async def lag(self) -> dict[tuple[str, int], int]:
        return {}


async def worker_role(member: Member, issuing: Issuing, reconciles: Reconciles, gate: FakeGate) -> WorkerRole:
    coupons = FakeCoupons()
    # A coupon that expires a moment from now: the expiry schedule must close its gate by itself.
    coupon = await coupons.create(
        NewCoupon("c", Decimal("0.1"), 5, CouponStatus.PUBLISHABLE, datetime.now(UTC) + timedelta(milliseconds=50))
    )
    await gate.open(coupon, datetime.now(UTC), created=True)
    return WorkerRole(
        source=member,
        worker=issuing,
        snapshots=FakeSnapshots(coupons),
        gate=gate,
        reconciler=reconciles,
        lag=NoLag(),
        fence=FakeFence(),
        reconcile_interval_s=0.02,
        expiry_interval_s=0.01,
        retry_pause_s=0.01,
    )


async def test_the_worker_joins_once_the_broker_answers_then_runs_its_schedule_and_closes_on_stop() -> None:
    member, issuing, reconciles, gate = Member(away=2), Issuing(), Reconciles(), FakeGate()
    role = await worker_role(member, issuing, reconciles, gate)
    stop = asyncio.Event()
    running = asyncio.create_task(role.run(stop))
    await asyncio.wait_for(issuing.ran.wait(), 2)
    assert member.started == 1

    async def passes() -> int:
        return reconciles.passes

    await eventually(passes, lambda n: n >= 2, timeout=2, what="reconcile on its interval")

    async def closes() -> list[tuple[int, RejectReason]]:
        return gate.closes

    await eventually(closes, lambda c: (1, RejectReason.EXPIRED) in c, timeout=2, what="the expired gate closed")
    stop.set()
    await asyncio.wait_for(running, 2)
    assert member.closed == 1


async def test_a_worker_asked_to_stop_before_the_broker_answers_never_runs() -> None:
    member, issuing, reconciles = Member(away=10**6), Issuing(), Reconciles()
    role = await worker_role(member, issuing, reconciles, FakeGate())
    stop = asyncio.Event()
    running = asyncio.create_task(role.run(stop))
    await asyncio.sleep(0.05)  # the broker stays away meanwhile
    stop.set()
    await asyncio.wait_for(running, 2)
    assert (member.started, issuing.ran.is_set(), reconciles.passes) == (0, False, 0)
