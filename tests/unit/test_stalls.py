"""A stall is seen and said; a consumer holding nothing while accepted requests wait is rebuilt, with backoff."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from couponrush.service.ports import Undecided
from couponrush.service.stalls import StallProbe, StallWatch


@dataclass
class Oldest:
    undecided: Undecided | None = None

    async def oldest_undecided(self) -> Undecided | None:
        return self.undecided


@dataclass
class Member:
    unassigned: float = 0.0
    rejoins: list[str] = field(default_factory=list)

    def unassigned_for(self) -> float:
        return self.unassigned

    def request_rejoin(self, why: str) -> None:
        self.rejoins.append(why)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(oldest: Oldest, member: Member, clock: Clock) -> StallWatch:
    return StallWatch(oldest, member, stall_after_s=30, rejoin_after_s=18, log_every_s=10, clock=clock)


async def test_the_oldest_undecided_request_is_named_once_it_waits_too_long(caplog: pytest.LogCaptureFixture) -> None:
    oldest, clock = Oldest(Undecided("req-1", 5, 12.0)), Clock()
    stalls = watch(oldest, Member(), clock)
    caplog.set_level(logging.WARNING, logger="couponrush.service.stalls")
    await stalls.check()
    assert caplog.records == []  # 12 s is not a stall
    oldest.undecided = Undecided("req-1", 5, 31.0)
    await stalls.check()
    clock.now += 5
    await stalls.check()  # within log_every_s: not repeated
    clock.now += 10
    await stalls.check()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["the oldest undecided accepted request req-1 (coupon 5) is 31s old"] * 2


async def test_a_member_holding_nothing_while_requests_wait_is_rebuilt_with_backoff_and_not_ready() -> None:
    oldest, member, clock = Oldest(Undecided("req-9", 3, 40.0)), Member(unassigned=20.0), Clock()
    stalls = watch(oldest, member, clock)
    probe = StallProbe(stalls)
    await stalls.check()
    assert len(member.rejoins) == 1
    assert "req-9" in member.rejoins[0]
    assert (await probe.check()).startswith("DOWN: subscribed but assigned no partition for 20s")
    clock.now += 18  # the second rebuild waits twice the bound
    await stalls.check()
    assert len(member.rejoins) == 1
    clock.now += 18
    await stalls.check()
    assert len(member.rejoins) == 2
    member.unassigned = 0.0  # assigned again
    await stalls.check()
    assert await probe.check() == "UP"
    assert stalls.rejoins == 0


async def test_an_idle_member_with_nothing_waiting_is_left_alone() -> None:
    member = Member(unassigned=600.0)  # one more member than partitions: holds nothing, for good
    stalls = watch(Oldest(None), member, Clock())
    await stalls.check()
    assert member.rejoins == []
    assert await StallProbe(stalls).check() == "UP"
