"""Accepted means decided within a bound: a stall is seen, said, and (where the worker can) mended.

Every few seconds the worker reads the oldest accepted request not yet decided. Older than
``stall_after_s``: one log line naming it and its age (at most every ``log_every_s``), and the API's
``couponrush_oldest_undecided_seconds`` shows the same at scrape time.

A consumer that is subscribed but has been assigned no partition for longer than ``rejoin_after_s``
(a few session timeouts) while such a request waits is stuck, not idle: a broker that lost its state
can leave a member outside every generation for good. The worker then rebuilds its consumer (and
says so), backing off if that does not help; its readiness fails meanwhile. A member that is merely
one more than there are partitions holds nothing while nothing waits, and is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from couponrush.service.logs import failed
from couponrush.service.ports import Undecided
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)


class UndecidedReader(Protocol):
    async def oldest_undecided(self) -> Undecided | None: ...


class Membership(Protocol):
    def unassigned_for(self) -> float:
        """Seconds this subscribed member has held no partition (0 while it holds any)."""
        ...

    def request_rejoin(self, why: str) -> None:
        """Rebuild the consumer before the next poll (it rejoins the group from scratch)."""
        ...


@dataclass
class StallWatch:
    reader: UndecidedReader
    membership: Membership
    stall_after_s: float = 30.0
    rejoin_after_s: float = 18.0
    interval_s: float = 2.0
    log_every_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    oldest: Undecided | None = None
    rejoins: int = 0
    _logged_at: float = field(default=-1e9)
    _rejoined_at: float = field(default=-1e9)

    def stuck(self) -> str | None:
        """Why this member is stuck (holding nothing while accepted requests wait), or None."""
        unassigned = self.membership.unassigned_for()
        oldest = self.oldest
        if unassigned <= self.rejoin_after_s or oldest is None or oldest.age_s <= self.rejoin_after_s:
            return None
        return (
            f"subscribed but assigned no partition for {unassigned:.0f}s while request {oldest.request_id} "
            f"(coupon {oldest.coupon_id}) has waited {oldest.age_s:.0f}s"
        )

    async def check(self) -> None:
        try:
            self.oldest = await self.reader.oldest_undecided()
        except Exception as exc:
            failed(log, exc, "could not read the oldest undecided request")
            return
        now = self.clock()
        oldest = self.oldest
        if oldest is not None and oldest.age_s > self.stall_after_s and now - self._logged_at >= self.log_every_s:
            self._logged_at = now
            log.warning(
                "the oldest undecided accepted request %s (coupon %s) is %.0fs old",
                oldest.request_id,
                oldest.coupon_id,
                oldest.age_s,
                extra={"request_id": oldest.request_id},
            )
        why = self.stuck()
        # Back off between rebuilds (each is a rejoin for the whole group): 1, 2, 4... x the bound, at most 8x.
        pause = self.rejoin_after_s * min(8, 2 ** min(self.rejoins, 3))
        if why is not None and now - self._rejoined_at >= pause:
            self._rejoined_at = now
            self.rejoins += 1
            log.warning("consumer stuck (%s); rebuilding it to rejoin the group", why)
            self.membership.request_rejoin(why)
        elif why is None and self.membership.unassigned_for() == 0:
            self.rejoins = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            if await sleep_unless(stop, self.interval_s):
                return


@dataclass(frozen=True, slots=True)
class StallProbe:
    """The worker's readiness: not ready while its consumer is stuck (see ``StallWatch.stuck``)."""

    watch: StallWatch
    name: str = "consumer"

    async def check(self) -> str:
        why = self.watch.stuck()
        return "UP" if why is None else f"DOWN: {why}"
