"""A chaos run: a real drop against real processes, a fault injected mid-drop, recovery, the invariants.

Every scenario gets its own system (database, its own ``redis-server``, embedded broker, the
``couponrush`` role processes), from the harness the end-to-end tests and the benchmark share; the
invariants are the harness's (``couponrush_bench.invariants.fault_checks``). Results are appended to
``.couponrush/chaos-results.jsonl`` in the checkout, from which RELIABILITY.md is filled.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from couponrush_bench import invariants
from couponrush_bench.harness import Sandbox, System, create_coupon
from couponrush_bench.polling import eventually
from couponrush_bench.servers import OwnRedis
from tests.support.drop import Answer, crowd, run_drop

RESULTS = Path(__file__).resolve().parents[2] / ".couponrush" / "chaos-results.jsonl"

# Faults lose acknowledged records (a broker restarted empty): re-drive them soon, not after 30 s.
CHAOS_ENV = {"COUPONRUSH_REDRIVE_AFTER_S": "5", "COUPONRUSH_RECONCILE_INTERVAL_S": "5"}


@dataclass
class Faults:
    """What was injected, and when the first fault struck (for the recovery time)."""

    injected: list[str] = field(default_factory=list)
    first_at: float | None = None
    first_wall: float | None = None  # epoch seconds, to compare with the database's timestamps
    done_wall: float | None = None  # when the fault (and its own recovery steps) finished
    drop_ended_at: float | None = None

    def note(self, what: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
            self.first_wall = time.time()
        self.injected.append(what)


@dataclass
class ChaosResult:
    scenario: str
    requests: int
    users: int
    quantity: int
    faults: list[str]
    answers: dict[str, int]
    told_ok: int
    issued: int
    invariants: dict[str, bool]
    # From the first fault until every request accepted before the fault ended was issued.
    recovery_s: float
    # From the first fault until every accepted request of the drop was decided.
    settled_s: float
    # From the first fault until the first request accepted after it (None: none was, e.g. sold out).
    admitting_again_s: float | None
    notes: dict[str, Any] = field(default_factory=dict)

    def record(self) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **asdict(self)}) + "\n")


@dataclass
class Chaos:
    """Starts systems for a test (each with a redis-server of its own, to restart) and stops them at the
    end; every role must then exit 0."""

    sandbox: Sandbox
    systems: list[tuple[System, OwnRedis]] = field(default_factory=list)

    async def start(self, name: str, extra_env: dict[str, str] | None = None) -> tuple[System, OwnRedis]:
        redis = OwnRedis(log_dir=self.sandbox.log_dir / f"chaos-{name}-redis")
        await redis.start()
        try:
            system = await self.sandbox.start_system(
                f"chaos-{name}", redis_url=redis.url(0), extra_env={**CHAOS_ENV, **(extra_env or {})}
            )
        except BaseException:
            redis.stop()
            raise
        self.systems.append((system, redis))
        return system, redis

    async def stop_all(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for system, redis in self.systems:
            running = set(system.processes)  # not those a scenario killed on purpose
            try:
                for role, code in (await self.sandbox.stop_system(system)).items():
                    if role in running:
                        codes[f"{system.name}/{role}"] = code
            finally:
                redis.stop()
        return codes


async def chaos_drop(
    system: System,
    scenario: str,
    fault: Callable[[Faults], Awaitable[None]],
    *,
    quantity: int = 500,
    users: int = 1500,
    requests: int = 3000,
    concurrency: int = 100,
    first_user: int = 100_000,
    settle_timeout_s: float = 150.0,
    record: bool = True,
    fault_after: float = 0.1,
) -> ChaosResult:
    """Run the drop, inject ``fault`` once ``fault_after`` of the answers are in (early: the coupons sell out
    well before the crowd is served), wait for recovery, check the invariants."""
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        coupon_id = await create_coupon(client, quantity=quantity)
    faults = Faults()

    async def midway() -> None:
        await fault(faults)
        faults.done_wall = time.time()

    answers = await run_drop(
        [system.base_url],
        coupon_id,
        crowd(users, requests, first_user=first_user),
        concurrency=concurrency,
        midway=midway,
        retry_unavailable_for_s=90.0,
        midway_after=int(requests * fault_after),
    )
    faults.drop_ended_at = time.monotonic()
    assert faults.first_at is not None, "the fault was never injected"
    result = await check_invariants(system, scenario, coupon_id, answers, quantity, faults, settle_timeout_s)
    if record or not all(result.invariants.values()):
        result.record()
    failed = [name for name, held in result.invariants.items() if not held]
    assert not failed, (failed, result)
    return result


async def check_invariants(
    system: System,
    scenario: str,
    coupon_id: int,
    answers: list[Answer],
    quantity: int,
    faults: Faults,
    settle_timeout_s: float,
) -> ChaosResult:
    assert faults.first_at is not None
    conn = await system.db()
    try:
        # Recovered = every accepted request decided (issued or refused) again. A run that never gets
        # there is still recorded (its "nothing accepted lost" fails), then the test fails.
        with contextlib.suppress(invariants.NotSettled):
            await invariants.wait_decided(conn, coupon_id, settle_timeout_s, interval=0.2)
        settled_s = time.monotonic() - faults.first_at
        last_decided = await conn.fetchval(
            "SELECT extract(epoch FROM max(decided_at)) FROM coupon_requests"
            " WHERE coupon_id = $1 AND requested_at <= to_timestamp($2)",
            coupon_id,
            faults.done_wall,
        )
        recovery_s = max(0.0, float(last_decided or 0) - (faults.first_wall or 0))
        first_after = await conn.fetchval(
            "SELECT extract(epoch FROM min(requested_at)) FROM coupon_requests"
            " WHERE coupon_id = $1 AND requested_at > to_timestamp($2)",
            coupon_id,
            faults.first_wall,
        )
        admitting_again_s = None if first_after is None else round(float(first_after) - (faults.first_wall or 0), 1)
        settled = await invariants.read_settled(conn, coupon_id)
    finally:
        await conn.close()
    holders = sorted(settled.holders)
    redis = system.redis()

    async def gate_holders() -> list[int]:
        return await invariants.gate_holders(redis, coupon_id)

    try:
        # A gate that drifted during the fault is repaired by the worker's periodic reconciliation.
        in_gate = await eventually(gate_holders, lambda g: g == holders, timeout=40, interval=0.5)
    except AssertionError:
        in_gate = await gate_holders()
    finally:
        await redis.aclose()

    told_ok = [a for a in answers if a.status == 200]
    demand = len({a.user_id for a in answers})
    checks = invariants.fault_checks(answers, settled, quantity, in_gate)
    return ChaosResult(
        scenario=scenario,
        requests=len(answers),
        users=demand,
        quantity=quantity,
        faults=faults.injected,
        answers={f"{s} {r or ''}".strip(): n for (s, r), n in Counter((a.status, a.reason) for a in answers).items()},
        told_ok=len(told_ok),
        issued=settled.issued_count,
        invariants=checks,
        recovery_s=round(recovery_s, 1),
        settled_s=round(settled_s, 1),
        admitting_again_s=admitting_again_s,
        notes={
            "issued but not told OK (answered 503/409 after a commit)": len(set(holders) - {a.user_id for a in told_ok})
        },
    )
