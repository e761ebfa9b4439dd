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
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from couponrush.dev.broker import free_port
from couponrush_bench.harness import Sandbox, System, create_coupon, wait_ready
from couponrush_bench.servers import OwnPostgres, OwnRedis
from tests.chaos.checks import check
from tests.chaos.drop import Progress, crowd, run_crowd
from tests.chaos.phases import PHASES, Phase, Trigger
from tests.chaos.stage import ChaosResult, Faults, Inject, Stage

__all__ = ["PHASES", "Chaos", "ChaosResult", "Faults", "Inject", "Phase", "Stage", "draw_seed"]

# Faults lose acknowledged records (a broker restarted empty): re-drive them soon, not after 30 s.
CHAOS_ENV = {"COUPONRUSH_REDRIVE_AFTER_S": "5", "COUPONRUSH_RECONCILE_INTERVAL_S": "5"}


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
        # Named by its seed too: each run has its own database and log files (chaos-<name>-<seed>-<role>.log).
        system, redis, urls = await self.start(f"{name}-{self.seed}", extra_env, apis=apis)
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


def draw_seed(env_value: str | None) -> int:
    """The run's seed: ``COUPONRUSH_CHAOS_SEED`` (replaying a run), else a fresh one."""
    return int(env_value) if env_value else secrets.randbelow(2**31)
