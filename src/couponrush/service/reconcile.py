"""Reconciliation: compare each open coupon's Redis gate with the database, repair Redis, say what was done.

PostgreSQL is the truth; the gate is a cache of it (holders = users with an issued coupon or a
pending request; stock = quantity - holders). A gate can drift: Redis flushed or restarted, a
release that failed after the worker's refusal committed, a dead letter whose release failed.

Reading Redis and the database is not one atomic step, and during a drop a gate legitimately
runs ahead of the database (a unit is reserved before the request is recorded, and released just
after a refusal is committed). So a difference only counts once it is seen twice, ``confirm_after_s``
apart (longer than any admission's recording bound), on the same users. Then the coupon's gate is
rebuilt with the same fenced rebuild that serves a flushed Redis (service/gate_rebuild.py), which
is safe while requests are being served. A gate that contradicts itself (stock + holders !=
quantity) or is missing needs no second look.

The outbox and requests are compared too, and reported (the relay's re-drive acts on them).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from couponrush.service.clock import Clock, utcnow
from couponrush.service.gate_rebuild import GateRebuilder
from couponrush.service.logs import failed
from couponrush.service.ports import GateSnapshots
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GateView:
    """What Redis holds for one coupon's reserving gate."""

    rebuilding: bool
    quantity: int
    stock: int
    holders: dict[int, str]


class GateInspector(Protocol):
    async def inspect(self, coupon_id: int) -> GateView | None:
        """The gate's state, or None when Redis holds nothing for this coupon."""
        ...


@dataclass(frozen=True, slots=True)
class LedgerStats:
    """What the database says about one coupon's requests, issues and outbox."""

    quantity: int
    issued_count: int
    issued_rows: int
    pending: int
    rejected: int
    dead_lettered: int
    unsent_outbox: int
    stuck: int  # pending longer than the re-drive threshold with nothing queued for them
    stuck_ids: tuple[str, ...] = ()  # the oldest of them (at most 10)


class Ledger(Protocol):
    async def stats(self, coupon_id: int, stuck_after_s: float) -> LedgerStats | None: ...


class RepairCounter(Protocol):
    """Where repairs are counted (wire it to metrics: ``couponrush_reconcile_repairs_total{kind}``)."""

    def repaired(self, kind: str) -> None: ...


@dataclass
class InMemoryRepairCounter:
    counts: dict[str, int] = field(default_factory=dict)

    def repaired(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class CouponReport:
    coupon_id: int
    ledger: LedgerStats | None
    problems: tuple[str, ...]
    repaired: bool

    def line(self) -> str:
        parts = [f"coupon {self.coupon_id}:"]
        if self.ledger is not None:
            s = self.ledger
            parts.append(
                f"quantity {s.quantity}, issued {s.issued_rows}, pending {s.pending} "
                f"(dead-lettered {s.dead_lettered}, stuck {s.stuck}), rejected {s.rejected}, "
                f"unsent outbox {s.unsent_outbox}"
            )
        parts.append("; ".join(self.problems) if self.problems else "consistent")
        if self.problems:
            parts.append("-> gate rebuilt" if self.repaired else "-> not repaired")
        if self.ledger is not None and self.ledger.stuck:
            more = "" if self.ledger.stuck <= len(self.ledger.stuck_ids) else ", ..."
            parts.append(f"; STUCK (accepted, undecided, nothing queued): {', '.join(self.ledger.stuck_ids)}{more}")
        return " ".join(parts)

    @property
    def stuck(self) -> int:
        return 0 if self.ledger is None else self.ledger.stuck


def _gate_problems(view: GateView | None, expected: dict[int, str], quantity: int) -> tuple[set[str], set[str]]:
    """(problems that need no confirmation, per-user differences that do)."""
    if view is None:
        return {"gate missing in Redis"}, set()
    if view.rebuilding:
        return set(), set()  # someone is rebuilding it right now
    sure: set[str] = set()
    if view.stock + len(view.holders) != view.quantity or view.quantity != quantity:
        sure.add(f"gate inconsistent (stock {view.stock} + holders {len(view.holders)} vs quantity {quantity})")
    diffs = {f"user {u} not reserved in Redis" for u, r in expected.items() if view.holders.get(u) != r}
    diffs |= {f"user {u} reserved in Redis without a live request" for u in view.holders if u not in expected}
    return sure, diffs


@dataclass
class Reconciler:
    snapshots: GateSnapshots
    inspector: GateInspector
    ledger: Ledger
    rebuilder: GateRebuilder
    counter: RepairCounter = field(default_factory=InMemoryRepairCounter)
    confirm_after_s: float = 3.0
    stuck_after_s: float = 30.0
    clock: Clock = field(default=utcnow)

    async def _differences(self, coupon_id: int) -> tuple[set[str], set[str], int] | None:
        snapshot = await self.snapshots.snapshot(coupon_id)
        if snapshot is None:
            return None
        view = await self.inspector.inspect(coupon_id)
        sure, diffs = _gate_problems(view, snapshot.reservations, snapshot.coupon.quantity)
        return sure, diffs, snapshot.coupon.quantity

    async def reconcile(self, coupon_ids: list[int] | None = None) -> list[CouponReport]:
        ids = coupon_ids if coupon_ids is not None else await self.snapshots.open_coupon_ids(self.clock())
        first: dict[int, tuple[set[str], set[str], int] | None] = {c: await self._differences(c) for c in ids}
        if any(d is not None and d[1] for d in first.values()):
            await asyncio.sleep(self.confirm_after_s)
        reports: list[CouponReport] = []
        for coupon_id in ids:
            seen = first[coupon_id]
            again = await self._differences(coupon_id) if seen is not None and seen[1] else seen
            if seen is None or again is None:
                continue
            problems = sorted(seen[0] | (seen[1] & again[1]))
            repaired = False
            if problems:
                log.warning("coupon %s: gate differs from the database: %s", coupon_id, "; ".join(problems[:5]))
                repaired = await self.rebuilder.rebuild(coupon_id)
                if repaired:
                    self.counter.repaired("gate")
            stats = await self.ledger.stats(coupon_id, self.stuck_after_s)
            report = CouponReport(coupon_id, stats, tuple(problems), repaired)
            if stats is not None and stats.issued_count != stats.issued_rows:  # the schema makes this impossible
                log.error(
                    "coupon %s: issued_count %d but %d issued rows", coupon_id, stats.issued_count, stats.issued_rows
                )
            reports.append(report)
        return reports


class Reconciles(Protocol):
    async def reconcile(self) -> list[CouponReport]: ...


async def reconcile_periodically(reconciler: Reconciles, stop: asyncio.Event, *, interval_s: float) -> None:
    """Reconcile every ``interval_s`` until ``stop`` (0 disables). Failures are logged and retried next time."""
    if interval_s <= 0:
        return
    while not await sleep_unless(stop, interval_s):
        try:
            reports = await reconciler.reconcile()
            repaired = [r.coupon_id for r in reports if r.repaired]
            if repaired:
                log.warning("reconcile repaired the gate of coupon(s) %s", repaired)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failed(log, exc, "reconcile pass failed; next in %.0fs", interval_s)
