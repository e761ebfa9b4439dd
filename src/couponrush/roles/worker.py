"""The worker process: join the consumer group once the broker answers, then issue, close expired gates,
sample the consumer lag and reconcile the gates with the database on a schedule, until asked to stop."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from couponrush.observability.instrument import LagSource, sample_consumer_lag
from couponrush.service.expiry import close_expired_gates
from couponrush.service.orphans import Fence, release_orphans_periodically
from couponrush.service.ports import Gate, GateSnapshots
from couponrush.service.reconcile import Reconciles, RepairCounter, reconcile_periodically
from couponrush.service.signals import sleep_unless
from couponrush.service.stalls import StallWatch

log = logging.getLogger(__name__)


class GroupMember(Protocol):
    async def start(self) -> None:
        """Make sure the topics exist and join the group; raises while the broker is away."""
        ...

    async def close(self) -> None: ...


class Issuer(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkerRole:
    source: GroupMember
    worker: Issuer
    snapshots: GateSnapshots
    gate: Gate
    reconciler: Reconciles
    lag: LagSource
    # Units reserved by requests never recorded (an API died mid-request) go back after this grace.
    fence: Fence
    orphan_grace_s: float = 3.0
    repairs: RepairCounter | None = None
    # Says when the oldest accepted request waits too long, and rebuilds a stuck consumer.
    stalls: StallWatch | None = None
    reconcile_interval_s: float = 60.0
    expiry_interval_s: float = 1.0
    orphan_interval_s: float = 1.0
    retry_pause_s: float = 1.0

    async def run(self, stop: asyncio.Event) -> None:
        if not await self._join(stop):
            return
        # Reconciliation may be mid-rebuild when we are asked to stop: cancel it (the rebuild lifts its fence).
        reconciling = asyncio.create_task(
            reconcile_periodically(self.reconciler, stop, interval_s=self.reconcile_interval_s)
        )
        try:
            await asyncio.gather(
                self.worker.run(stop),
                close_expired_gates(self.snapshots, self.gate, stop, interval_s=self.expiry_interval_s),
                release_orphans_periodically(
                    self.gate,
                    self.fence,
                    self.snapshots.open_coupon_ids,
                    stop,
                    grace_s=self.orphan_grace_s,
                    interval_s=self.orphan_interval_s,
                    counter=self.repairs,
                ),
                sample_consumer_lag(self.lag, stop),
                *([self.stalls.run(stop)] if self.stalls is not None else []),
            )
        finally:
            reconciling.cancel()
            await asyncio.gather(reconciling, return_exceptions=True)
            await self.source.close()

    async def _join(self, stop: asyncio.Event) -> bool:
        """Subscribe only once the topics exist, so the consumer never waits a metadata refresh for them."""
        while not stop.is_set():
            try:
                await self.source.start()
                return True
            except Exception as exc:
                log.warning("broker not reachable yet (%s); retrying in %.0fs", exc, self.retry_pause_s)
                await sleep_unless(stop, self.retry_pause_s)
        return False
