"""Waiting for a request's outcome: woken by the decision, never by polling; nothing missed between read and wait."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

from couponrush.adapters.decisions import parse_pairs
from couponrush.domain.model import RejectReason, RequestStatus, RequestView
from couponrush.service.outcomes import RequestOutcomes, Waiters, until
from tests.support.polling import eventually

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PENDING = RequestView("r1", 7, 1, RequestStatus.PENDING, None, NOW, None, None)
ISSUED = dataclasses.replace(PENDING, status=RequestStatus.ISSUED, decided_at=NOW, issued_at=NOW)


@dataclass
class FakeStatus:
    """The database's answer; counts reads (a poll would show up as many)."""

    view: RequestView | None = PENDING
    reads: int = 0
    # Called after each read: lets a test decide the request right between a read and the wait.
    after_read: list[object] = field(default_factory=list)

    async def latest(self, user_id: int, coupon_id: int) -> RequestView | None:
        self.reads += 1
        seen = self.view
        for hook in self.after_read:
            hook()  # type: ignore[operator]
        self.after_read.clear()
        return seen


async def waiting_for(waiters: Waiters, count: int) -> None:
    async def registered() -> int:
        return len(waiters)

    await eventually(registered, lambda n: n >= count, timeout=2, interval=0.001, what=f"{count} waiter(s)")


async def test_a_waiter_is_woken_by_the_decision_and_reads_once_more() -> None:
    status, waiters = FakeStatus(), Waiters()
    outcomes = RequestOutcomes(status, waiters)
    waiting = asyncio.create_task(outcomes.wait(7, 1, timeout_s=30))
    await waiting_for(waiters, 1)
    assert waiters.decided([(8, 1), (7, 2)]) == 0  # someone else's decisions don't wake it
    status.view = ISSUED
    assert waiters.decided([(7, 1)]) == 1
    assert await asyncio.wait_for(waiting, 1) == ISSUED
    assert status.reads == 2
    assert len(waiters) == 0  # nothing left behind


async def test_a_decision_between_the_read_and_the_wait_is_not_missed() -> None:
    waiters = Waiters()

    def decide() -> None:
        status.view = ISSUED
        waiters.decided([(7, 1)])

    status = FakeStatus(after_read=[decide])
    assert await asyncio.wait_for(RequestOutcomes(status, waiters).wait(7, 1, timeout_s=30), 1) == ISSUED


async def test_without_a_decision_it_answers_the_pending_view_when_the_wait_is_over() -> None:
    status = FakeStatus()
    started = asyncio.get_running_loop().time()
    assert await RequestOutcomes(status, Waiters()).wait(7, 1, timeout_s=0.05) == PENDING
    assert asyncio.get_running_loop().time() - started >= 0.05
    assert status.reads == 1  # no polling meanwhile


async def test_no_request_or_a_decided_one_is_answered_at_once() -> None:
    assert await RequestOutcomes(FakeStatus(view=None), Waiters()).wait(7, 1, 30) is None
    rejected = dataclasses.replace(ISSUED, status=RequestStatus.REJECTED, reason=RejectReason.EXPIRED)
    assert await RequestOutcomes(FakeStatus(view=rejected), Waiters()).wait(7, 1, 30) == rejected


async def test_closing_answers_every_waiter_at_once_and_nobody_waits_after() -> None:
    status, waiters = FakeStatus(), Waiters()
    outcomes = RequestOutcomes(status, waiters)
    waiting = [asyncio.create_task(outcomes.wait(u, 1, 30)) for u in range(100)]
    await waiting_for(waiters, 100)
    waiters.close()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 1) == [PENDING] * 100
    assert await asyncio.wait_for(outcomes.wait(7, 1, 30), 1) == PENDING


async def test_a_stream_sends_the_view_heartbeats_while_idle_and_ends_after_the_decision() -> None:
    status, waiters = FakeStatus(), Waiters()
    seen: list[RequestView | None] = []

    async def follow() -> None:
        async for view in RequestOutcomes(status, waiters).follow(7, 1, heartbeat_s=0.02):
            seen.append(view)
            if seen.count(None) == 2:
                status.view = ISSUED
                waiters.decided([(7, 1)])

    await asyncio.wait_for(follow(), 2)
    assert seen == [PENDING, None, None, ISSUED]
    assert status.reads == 2


async def test_a_missed_notification_wakes_everyone_to_read_again() -> None:
    status, waiters = FakeStatus(), Waiters()
    waiting = asyncio.create_task(RequestOutcomes(status, waiters).wait(7, 1, 30))
    await waiting_for(waiters, 1)
    status.view = ISSUED
    waiters.wake_all()
    assert await asyncio.wait_for(waiting, 1) == ISSUED


def test_notification_payloads_are_parsed_and_garbage_skipped() -> None:
    assert parse_pairs("7:1,8:1") == [(7, 1), (8, 1)]
    assert parse_pairs("7:1,x:2,,3:") == [(7, 1)]


async def test_a_heartbeat_leaves_the_wake_up_to_come_untouched() -> None:
    """A decision heard in the same turn of the loop as a heartbeat's timer must still wake the stream: only
    a wake-up settles the waiter's future, never its own timeout."""
    waiters = Waiters()
    woken = waiters.register(7, 1)
    assert await until(woken, 0.01) is False
    assert not woken.done()
    assert waiters.decided([(7, 1)]) == 1
    assert await until(woken, 1) is True
    waiters.unregister(7, 1, woken)
    assert len(waiters) == 0
