"""A chaos run: a real drop against real processes, one fault injected in a chosen phase, recovery, the checks.

Every run gets its own system (a database on the suite's own PostgreSQL cluster, its own ``redis-server``,
embedded broker and ``couponrush`` role processes), from the harness the end-to-end tests and the benchmark
share. The fault strikes in a phase of the drop, timed by what the clients were told:

- ``claiming``: once a seeded-random share (10-60%) of the quantity has been told 200;
- ``sellout``: once told 200 reaches the quantity (or a SOLD_OUT comes back);
- ``refusing``: after the sell-out, once a seeded-random number (100-500) of SOLD_OUT/ALREADY_REQUESTED came in.

Each run has a seed (printed, and recorded with its result): it picks the crowd's order, the phase's
threshold and the fault's own choices. ``COUPONRUSH_CHAOS_SEED`` replays one. After the drop: the
invariants (``couponrush_bench.invariants.fault_checks``), every request answered at all, every accepted
request decided within 60 s of the fault's repair, and a fresh request issued within 30 s. Results are
appended to ``.couponrush/chaos-results.jsonl``; ``scripts/reliability_table.py`` makes RELIABILITY.md's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import secrets
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from couponrush.dev.broker import free_port
from couponrush_bench import invariants
from couponrush_bench.harness import ADMIN_TOKEN, Sandbox, System, create_coupon, wait_ready
from couponrush_bench.polling import eventually
from couponrush_bench.servers import OwnPostgres, OwnRedis
from tests.chaos.drop import Answer, Progress, crowd, run_crowd

RESULTS = Path(__file__).resolve().parents[2] / ".couponrush" / "chaos-results.jsonl"
# One pytest session: the table is made from one session's runs unless told otherwise.
SESSION = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"

# Faults lose acknowledged records (a broker restarted empty): re-drive them soon, not after 30 s.
CHAOS_ENV = {"COUPONRUSH_REDRIVE_AFTER_S": "5", "COUPONRUSH_RECONCILE_INTERVAL_S": "5"}

DECIDED_WITHIN_S = 60.0  # accepted means decided within this long of the fault's repair
FRESH_ISSUED_WITHIN_S = 30.0  # after the run, a fresh request is issued within this long
SETTLE_AFTER_REPAIR_S = 90.0  # how long the run waits for the accepted requests (a failed run: how late)


class Phase(StrEnum):
    CLAIMING = "claiming"
    SELLOUT = "sellout"
    REFUSING = "refusing"


PHASES = tuple(Phase)


@dataclass(frozen=True, slots=True)
class Trigger:
    """When, in the drop, the fault strikes."""

    phase: Phase
    quantity: int
    told_ok_at_least: int = 0  # claiming
    refused_after_sold_out: int = 0  # refusing

    @classmethod
    def draw(cls, phase: Phase, quantity: int, rng: random.Random) -> Trigger:
        if phase is Phase.CLAIMING:
            return cls(phase, quantity, told_ok_at_least=max(1, math.ceil(quantity * rng.uniform(0.10, 0.60))))
        if phase is Phase.REFUSING:
            return cls(phase, quantity, refused_after_sold_out=rng.randint(100, 500))
        return cls(phase, quantity)

    def fired(self, progress: Progress) -> bool:
        if self.phase is Phase.CLAIMING:
            return progress.told_ok >= self.told_ok_at_least
        if self.phase is Phase.SELLOUT:
            return progress.sold_out
        return (progress.refused_since_sold_out or 0) >= self.refused_after_sold_out

    def describe(self) -> str:
        if self.phase is Phase.CLAIMING:
            share = self.told_ok_at_least / self.quantity
            return f"claiming: {self.told_ok_at_least} of {self.quantity} told 200 ({share:.0%})"
        if self.phase is Phase.SELLOUT:
            return f"sellout: told 200 reached {self.quantity} (or a SOLD_OUT came back)"
        return f"refusing: {self.refused_after_sold_out} refusals after the sell-out"


@dataclass
class Faults:
    """What was injected, when the first fault struck, and when the last one was repaired."""

    injected: list[str] = field(default_factory=list)
    first_at: float | None = None  # monotonic
    first_wall: float | None = None  # epoch seconds, to compare with the database's timestamps
    repaired_at: float | None = None
    repaired_wall: float | None = None

    def note(self, what: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
            self.first_wall = time.time()
        self.injected.append(what)

    def repaired(self) -> None:
        """The fault is over (the process restarted, the broker back): the 60 s bound counts from here."""
        self.repaired_at = time.monotonic()
        self.repaired_wall = time.time()


@dataclass
class Stage:
    """What a fault acts on, and the drop it strikes."""

    system: System
    redis: OwnRedis
    postgres: OwnPostgres
    api_urls: list[str]
    faults: Faults
    rng: random.Random
    progress: Progress
    coupon_id: int = 0
    # What the fault saw (recorded with the result).
    notes: dict[str, Any] = field(default_factory=dict)

    async def answers_while_down(self, count: int, *, accepted: int = 0, timeout: float = 60) -> tuple[int, int]:
        """Wait until ``count`` more requests were answered, ``accepted`` of them with 200, or the drop ended:
        the crowd felt the fault. How many were answered, and accepted, meanwhile."""
        answers, told_ok = len(self.progress.answers), self.progress.told_ok

        async def since() -> tuple[int, int, bool]:
            progress = self.progress
            return len(progress.answers) - answers, progress.told_ok - told_ok, progress.finished

        got = await eventually(
            since,
            lambda s: (s[0] >= count and s[1] >= accepted) or s[2],
            timeout=timeout,
            what=f"{count} answers ({accepted} accepted) during the fault",
        )
        return got[0], got[1]

    def sigkill(self, name: str) -> None:
        code = self.system.stop(name, signal.SIGKILL)
        assert code == -signal.SIGKILL, (name, code)


Inject = Callable[[Stage], Coroutine[Any, Any, None]]


@dataclass
class ChaosResult:
    scenario: str
    phase: str
    seed: int
    test: str
    requests: int
    users: int
    quantity: int
    trigger: str
    faults: list[str]
    answers: dict[str, int]
    told_ok: int
    issued: int
    invariants: dict[str, bool]
    # The longest an accepted request waited for its decision, counted from the fault's repair (or from
    # its acceptance, if later): what "decided within 60 s of the repair" bounds. None: some never were.
    recovery_s: float | None
    # From the first fault until it was repaired (process restarted, broker back...).
    outage_s: float
    # A fresh request for a fresh coupon after the run: first attempt -> ISSUED (None: not within 30 s).
    fresh_issued_s: float | None
    # From the first fault until every accepted request of the drop was decided.
    settled_s: float
    # From the first fault until the first request accepted after it (None: none was, e.g. sold out).
    admitting_again_s: float | None
    # First request sent -> last answer.
    drop_s: float
    at_answer: int  # how many answers were in when the fault struck
    session: str = SESSION
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        return [name for name, held in self.invariants.items() if not held]

    def record(self) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **asdict(self)}) + "\n")


@dataclass
class Chaos:
    """Starts the systems of one test (each with a redis-server of its own) on the suite's own PostgreSQL
    cluster, runs its drop, and stops everything at the end; every role still running must then exit 0."""

    sandbox: Sandbox
    postgres: OwnPostgres
    seed: int
    test: str
    systems: list[tuple[System, OwnRedis]] = field(default_factory=list)

    async def start(
        self, name: str, extra_env: dict[str, str] | None = None, *, apis: int = 1
    ) -> tuple[System, OwnRedis, list[str]]:
        """A system with ``apis`` API processes (``api``, ``api2``...: each on its own port); their URLs."""
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
        urls = [system.base_url]
        for n in range(2, apis + 1):
            port = free_port()
            system.start("api", name=f"api{n}", env={"COUPONRUSH_HTTP_PORT": str(port)})
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls[1:]:
            await wait_ready(url)
        return system, redis, urls

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

    async def run(
        self,
        scenario: str,
        phase: Phase,
        inject: Inject,
        *,
        name: str,
        apis: int = 1,
        extra_env: dict[str, str] | None = None,
        prepare: Callable[[Stage], Awaitable[None]] | None = None,
        verify: Callable[[Stage, ChaosResult], Awaitable[None]] | None = None,
        quantity: int = 300,
        users: int = 1000,
        requests: int = 2000,
        concurrency: int = 50,
        record: bool = True,
    ) -> tuple[ChaosResult, Stage]:
        """Start a system, run the drop with ``inject`` striking in ``phase``, check; the result (recorded).

        ``prepare`` runs before the drop; ``verify`` (the scenario's own checks) after the common ones, its
        failure counted as the run's violation ``scenario_checks``. Fails the test if any check failed (after
        recording the run)."""
        system, redis, urls = await self.start(name, extra_env, apis=apis)
        rng = random.Random(self.seed)
        stage = Stage(system, redis, self.postgres, urls, Faults(), rng, Progress(quantity))
        if prepare is not None:
            await prepare(stage)
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            stage.coupon_id = await create_coupon(client, quantity=quantity)
        trigger = Trigger.draw(phase, quantity, rng)
        fault_rng = random.Random(rng.random())  # the fault's own choices, independent of the crowd's size
        stage.rng = fault_rng
        users_in_order = crowd(users, requests, first_user=100_000, rng=rng)
        fault_task: asyncio.Task[None] | None = None
        at_answer = 0

        def on_answer(progress: Progress) -> None:
            nonlocal fault_task, at_answer
            if fault_task is None and trigger.fired(progress):
                at_answer = len(progress.answers)
                fault_task = asyncio.create_task(inject(stage))

        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await run_crowd(
            urls, stage.coupon_id, users_in_order, stage.progress, concurrency=concurrency, on_answer=on_answer
        )
        drop_s = max(a.at for a in answers) - started
        assert fault_task is not None, f"the fault never struck ({trigger.describe()}): {stage.progress}"
        try:
            await fault_task
            fault_error = None
        except Exception as exc:  # e.g. the restarted relay never took the lock: a finding, checked and recorded
            fault_error = repr(exc)[:1000]
        faults = stage.faults
        assert faults.first_at is not None, f"the fault noted nothing ({fault_error})"
        if faults.repaired_at is None:
            faults.repaired()
        result = await check(stage, scenario, phase, answers, quantity, trigger, self.seed, self.test)
        result.invariants["fault_and_repair_completed"] = fault_error is None
        if fault_error is not None:
            result.notes["fault failed"] = fault_error
        result.drop_s = round(drop_s, 1)
        result.at_answer = at_answer
        result.notes.update(stage.notes)
        if verify is not None:
            try:
                await verify(stage, result)
                result.invariants["scenario_checks"] = True
            except AssertionError as exc:
                result.invariants["scenario_checks"] = False
                result.notes["scenario check failed"] = repr(exc)[:1000]
        if record:
            result.record()
        assert not result.violations, (result.violations, result)
        return result, stage


async def check(
    stage: Stage,
    scenario: str,
    phase: Phase,
    answers: list[Answer],
    quantity: int,
    trigger: Trigger,
    seed: int,
    test: str,
) -> ChaosResult:
    system, faults, coupon_id = stage.system, stage.faults, stage.coupon_id
    assert faults.first_at is not None
    assert faults.repaired_at is not None
    assert faults.repaired_wall is not None
    told_ok = [a for a in answers if a.status == 200]
    conn = await system.db()
    try:
        # Recovered = every accepted request decided (issued or refused) again. A run that never gets
        # there is still recorded (its "nothing accepted lost" fails), then the test fails.
        wait = max(5.0, faults.repaired_at + SETTLE_AFTER_REPAIR_S - time.monotonic())
        with contextlib.suppress(invariants.NotSettled):
            await invariants.wait_decided(conn, coupon_id, wait, interval=0.2)
        settled_s = time.monotonic() - faults.first_at
        repaired = datetime.fromtimestamp(faults.repaired_wall, UTC)
        waits = await invariants.decision_waits(conn, [a.request_id or "" for a in told_ok], since=repaired)
        first_after = await conn.fetchval(
            "SELECT extract(epoch FROM min(requested_at)) FROM coupon_requests"
            " WHERE coupon_id = $1 AND requested_at > to_timestamp($2)",
            coupon_id,
            faults.first_wall,
        )
        settled = await invariants.read_settled(conn, coupon_id)
    finally:
        await conn.close()
    in_gate = await gate_after_reconcile(system, coupon_id, settled.holders)
    fresh_s = await fresh_request_issued_s(stage)

    checks: dict[str, bool] = {
        **invariants.fault_checks(answers, settled, quantity, in_gate),
        "every_request_answered": all(a.status != 0 and a.reason != "NOT_ENVELOPE" for a in answers),
        "accepted_decided_within_60s_of_repair": invariants.decided_within(waits, DECIDED_WITHIN_S),
        "fresh_request_issued_within_30s": fresh_s is not None,
    }
    worst = max(waits.values(), default=0.0)
    return ChaosResult(
        scenario=scenario,
        phase=phase.value,
        seed=seed,
        test=test,
        requests=len(answers),
        users=len({a.user_id for a in answers}),
        quantity=quantity,
        trigger=trigger.describe(),
        faults=faults.injected,
        answers={f"{s} {r or ''}".strip(): n for (s, r), n in Counter((a.status, a.reason) for a in answers).items()},
        told_ok=len(told_ok),
        issued=settled.issued_count,
        invariants=checks,
        recovery_s=None if math.isinf(worst) else round(max(0.0, worst), 1),
        outage_s=round(faults.repaired_at - faults.first_at, 1),
        fresh_issued_s=fresh_s,
        settled_s=round(settled_s, 1),
        admitting_again_s=None if first_after is None else round(float(first_after) - (faults.first_wall or 0), 1),
        drop_s=0.0,
        at_answer=0,
        notes={
            "issued but not told OK (answered 503/409 after a commit)": len(
                set(settled.holders) - {a.user_id for a in told_ok}
            ),
            "retried requests": sum(a.attempts > 1 for a in answers),
            "logs": str(system.log_dir / system.name) + "-*.log",
        },
    )


async def gate_after_reconcile(system: System, coupon_id: int, holders: list[int]) -> list[int]:
    """The gate's holders once it matches the database (a gate that drifted during the fault is repaired by
    the worker's periodic reconciliation, every 5 s here), or as they are after 40 s."""
    redis = system.redis()

    async def gate_holders() -> list[int]:
        try:
            return await invariants.gate_holders(redis, coupon_id)
        except OSError:
            return []

    try:
        return await eventually(gate_holders, lambda g: g == sorted(holders), timeout=40, interval=0.5)
    except AssertionError:
        return await gate_holders()
    finally:
        await redis.aclose()


async def fresh_request_issued_s(stage: Stage, within: float = FRESH_ISSUED_WITHIN_S) -> float | None:
    """A fresh coupon, a fresh user's request for it: seconds from the first attempt until it is ISSUED, or
    None if not within ``within`` (the pipeline is live: no stuck consumer group, no relay standing by)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + within
    user_id = 900_000_000 + stage.rng.randrange(1_000_000)
    urls = stage.api_urls
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=u, timeout=10)) for u in urls]
        coupon_id: int | None = None
        attempt = 0
        while loop.time() < deadline:
            client = clients[attempt % len(clients)]
            attempt += 1
            with contextlib.suppress(httpx.TransportError, AssertionError):
                if coupon_id is None:
                    coupon_id = await create_coupon(client, quantity=1, admin_token=ADMIN_TOKEN, name="fresh")
                response = await client.post(f"/api/v1/users/{user_id}/coupons/publish", json={"couponId": coupon_id})
                if response.status_code not in (200, 409, 503):
                    return None
                if response.status_code != 503:  # 409 ALREADY_REQUESTED: an earlier attempt was accepted
                    break
            await asyncio.sleep(0.2)
        if coupon_id is None:
            return None
        while loop.time() < deadline:
            with contextlib.suppress(httpx.TransportError):
                response = await clients[0].get(f"/api/v1/users/{user_id}/coupons/{coupon_id}/request")
                status = (response.json().get("data") or {}).get("status") if response.status_code == 200 else None
                if status == "ISSUED":
                    return round(loop.time() - started, 1)
                if status == "REJECTED":
                    return None
            await asyncio.sleep(0.1)
    return None


def draw_seed(env_value: str | None) -> int:
    """The run's seed: ``COUPONRUSH_CHAOS_SEED`` (replaying a run), else a fresh one."""
    return int(env_value) if env_value else secrets.randbelow(2**31)
