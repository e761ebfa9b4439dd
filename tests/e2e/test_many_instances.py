"""Many instances of every role at once: 3 API processes (the crowd spread over them), 2 relays (one active,
one standing by), 3 workers on a 6-partition topic; mid-drop a 4th worker joins, the active relay is
SIGKILLed (the standby takes over within seconds) and one worker is SIGKILLed. OK still means issued,
exactly: ``quantity`` issued, nobody twice, every user told OK holds it, nothing accepted lost."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from couponrush.config import PUBLISH_REQUESTED_TOPIC
from couponrush.dev.broker import free_port
from couponrush_bench.harness import Sandbox, System, create_coupon, kafka_partition, wait_ready
from couponrush_bench.invariants import assert_ok_means_issued
from couponrush_bench.polling import eventually
from tests.chaos.drop import Progress, crowd, run_crowd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

PARTITIONS = 6
TAKEOVER_WITHIN_S = 10.0
LOCK_HELD = "holding the relay lock"


async def every_partition_held_by(system: System, workers: list[str], *, timeout: float = 60) -> None:
    """Until the latest assignments of ``workers`` cover every partition, each exactly once, each worker some."""

    async def assignments() -> list[set[str]]:
        return [set(system.last_assignment(w)) for w in workers]

    def settled(held: list[set[str]]) -> bool:
        every = [p for partitions in held for p in partitions]
        return len(every) == len(set(every)) == PARTITIONS and all(held)

    await eventually(assignments, settled, timeout=timeout, interval=0.2, what=f"{workers} sharing the partitions")


@pytest.fixture
async def fleet(sandbox: Sandbox) -> AsyncIterator[tuple[System, list[str]]]:
    """One system (its database, Redis database, broker) with 3 APIs, 2 relays and 3 workers; the API URLs."""
    system = await sandbox.start_system(
        "many", extra_env={"COUPONRUSH_KAFKA_PARTITIONS": str(PARTITIONS), "COUPONRUSH_REDRIVE_AFTER_S": "5"}
    )
    try:

        async def lock_holders() -> int:
            return sum(LOCK_HELD in system.log_of(r) for r in ("relay", "relay2"))

        await eventually(lock_holders, lambda n: n == 1, timeout=30, what="the first relay holding the lock")
        system.start("relay", name="relay2")  # stands by: the lock is taken
        urls = [system.base_url]
        for name in ("api2", "api3"):
            port = free_port()
            system.start("api", name=name, env={"COUPONRUSH_HTTP_PORT": str(port)})
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls[1:]:
            await wait_ready(url)
        for name in ("worker2", "worker3"):
            system.start("worker", name=name)
            await system.wait_worker_assigned(name=name)
        await every_partition_held_by(system, ["worker", "worker2", "worker3"])
        assert LOCK_HELD not in system.log_of("relay2")  # a standby, not a second producer
        yield system, urls
    finally:
        running = set(system.processes)  # not those the test killed on purpose
        codes = await sandbox.stop_system(system)
    # Every process still running at the end stops cleanly on SIGTERM.
    assert {name: code for name, code in codes.items() if name in running and code != 0} == {}, codes


async def test_three_apis_two_relays_four_workers_one_of_each_killed_ok_means_issued(
    fleet: tuple[System, list[str]],
) -> None:
    system, urls = fleet
    quantity = 2500
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        coupon_id = await create_coupon(client, quantity=quantity)
    seen: dict[str, float] = {}
    workers = ["worker", "worker2", "worker3", "worker4"]
    killed: list[str] = []
    started = time.monotonic()

    async def mid_drop() -> None:
        # A 4th worker joins; once all four share the partitions, the active relay and a worker die.
        seen["worker4 started at s"] = time.monotonic() - started
        system.start("worker", name="worker4")
        await every_partition_held_by(system, workers)
        killed_at = time.monotonic()
        seen["relay killed at s"] = killed_at - started
        assert await asyncio.to_thread(system.stop, "relay", signal.SIGKILL) == -signal.SIGKILL

        async def standby_holds() -> bool:
            return LOCK_HELD in system.log_of("relay2")

        await eventually(standby_holds, bool, timeout=30, interval=0.1, what="the standby relay taking over")
        seen["relay takeover s"] = time.monotonic() - killed_at
        # The worker that holds the coupon's partition (a drop is keyed by its coupon: one partition) dies.
        partition = f"{PUBLISH_REQUESTED_TOPIC}[{kafka_partition(str(coupon_id), PARTITIONS)}]"
        [victim] = [w for w in workers if partition in system.last_assignment(w)]
        assert await asyncio.to_thread(system.stop, victim, signal.SIGKILL) == -signal.SIGKILL
        killed.append(victim)
        seen["worker killed at s"] = time.monotonic() - started
        seen["answers in when the worker was killed"] = len(progress.answers)
        seen["told OK when the worker was killed"] = progress.told_ok

    progress = Progress(quantity)
    tasks: list[asyncio.Task[None]] = []

    def midway(progress: Progress) -> None:
        if not tasks and len(progress.answers) >= 200:
            tasks.append(asyncio.create_task(mid_drop()))

    users = crowd(4000, 8000, first_user=500_000, rng=random.Random(11))
    answers = await run_crowd(urls, coupon_id, users, progress, concurrency=60, on_answer=midway)
    await tasks[0]
    print("many instances:", {k: round(v, 1) for k, v in seen.items()}, "killed:", killed)
    # The kills struck while units were still being claimed (and issued), not after the sell-out.
    assert seen["told OK when the worker was killed"] < quantity, seen
    assert seen["relay takeover s"] < TAKEOVER_WITHIN_S, seen
    # The three workers left hold every partition between them (the killed one's went to the others).
    await every_partition_held_by(system, [w for w in workers if w not in killed])
    redis = system.redis()
    try:
        # Exactly `quantity` told OK (each once) and issued to exactly them; every other answer a named refusal.
        await assert_ok_means_issued(system.database_url, redis, coupon_id, answers, quantity)
    finally:
        await redis.aclose()
