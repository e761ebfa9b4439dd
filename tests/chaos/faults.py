"""The faults of the chaos matrix: each strikes a running system once (``Stage``), repairs what an operator's
supervisor would (a process restarted, the broker back), and says when it did (``Faults.repaired``).

Blocking steps (waiting for a process, ``pg_ctl``) run in a thread: the crowd's clients share this event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from couponrush.config import PUBLISH_REQUESTED_TOPIC
from couponrush_bench.harness import System, wait_ready
from couponrush_bench.polling import eventually
from tests.chaos.stage import ChaosResult, Inject, Stage


@dataclass(frozen=True)
class Scenario:
    key: str  # the test id's part
    title: str  # RELIABILITY.md's row
    inject: Inject
    apis: int = 1
    # Checks of the scenario's own, after the common ones held.
    verify: Callable[[Stage, ChaosResult], Awaitable[None]] | None = None


async def restart_worker(stage: Stage, *, name: str = "worker") -> None:
    # Only kill a worker that has joined its group: one leaving mid-join stalls Tansu's group for minutes.
    system = stage.system
    assigned = system.worker_assignments(name)
    await asyncio.to_thread(stage.sigkill, name)
    stage.faults.note(f"{name} SIGKILL")
    system.start("worker", name=name)
    stage.faults.repaired()
    await system.wait_worker_assigned(times=assigned + 1, name=name)


async def worker_kill(stage: Stage) -> None:
    await restart_worker(stage)


async def relay_kill(stage: Stage) -> None:
    system = stage.system
    held = system.log_of("relay").count("holding the relay lock")
    await asyncio.to_thread(stage.sigkill, "relay")
    stage.faults.note("relay SIGKILL")
    system.start("relay")
    stage.faults.repaired()

    async def holding() -> int:
        return system.log_of("relay").count("holding the relay lock")

    await eventually(holding, lambda n: n > held, timeout=30, what="the restarted relay taking the lock")


async def api_kill(stage: Stage) -> None:
    """The first of two API processes dies with requests in flight (their clients see the connection drop
    and retry, on the other process or on this one once restarted)."""
    system = stage.system
    await asyncio.to_thread(stage.sigkill, "api")
    stage.faults.note("api SIGKILL (1 of 2 API processes)")
    system.start("api")
    stage.faults.repaired()
    await wait_ready(system.base_url)


async def kill_broker(system: System) -> None:
    pid = system.broker.pid
    assert pid is not None, "the broker is not running"
    os.kill(pid, signal.SIGKILL)
    await asyncio.to_thread(system.broker.stop)  # reaps it, waits for the port to close


async def broker_restart_empty(stage: Stage) -> None:
    """The broker dies (Tansu keeps nothing: every record, topic, offset and producer id is gone); while it is
    down the crowd goes on (accepted requests wait in the outbox); it comes back empty."""
    system = stage.system
    await kill_broker(system)
    stage.faults.note("broker SIGKILL (every record, topic and offset lost)")
    # Long enough for the crowd to feel it: while claiming, 30 requests accepted into the outbox meanwhile.
    answered, accepted = await stage.answers_while_down(200, accepted=0 if stage.progress.sold_out else 30)
    stage.notes["while the broker was down: answered, told 200"] = (answered, accepted)
    await asyncio.to_thread(system.broker.start)
    stage.faults.note("broker restarted empty")
    stage.faults.repaired()


async def redis_flushall(stage: Stage) -> None:
    client = stage.system.redis()
    try:
        await client.flushall()
    finally:
        await client.aclose()
    stage.faults.note("FLUSHALL on the system's redis-server")
    stage.faults.repaired()


async def redis_restart_empty(stage: Stage) -> None:
    stage.redis.kill()
    stage.faults.note("redis-server SIGKILL")
    await stage.redis.start()
    stage.faults.note("redis-server restarted empty")
    stage.faults.repaired()


async def postgres_restart(stage: Stage) -> None:
    stage.faults.note("PostgreSQL restart (pg_ctl restart -m fast: every connection cut)")
    await asyncio.to_thread(stage.postgres.restart)
    stage.faults.repaired()


async def postgres_crash(stage: Stage) -> None:
    """Stopped as a crash stops it (no checkpoint, open transactions simply gone), restarted from its WAL."""
    stage.faults.note("PostgreSQL crash (pg_ctl restart -m immediate: crash recovery from the WAL)")
    await asyncio.to_thread(stage.postgres.restart, "immediate")
    stage.faults.repaired()


async def all_at_once(stage: Stage) -> None:
    """Worker, relay, API, broker and Redis die together (SIGKILL), then all come back (broker and Redis empty)."""
    system = stage.system
    assigned = system.worker_assignments()
    for name in ("worker", "relay", "api"):
        await asyncio.to_thread(stage.sigkill, name)
    await kill_broker(system)
    stage.redis.kill()
    stage.faults.note("worker, relay, api, broker and redis-server SIGKILLed at once")
    await stage.redis.start()
    await asyncio.to_thread(system.broker.start)
    for role in ("relay", "worker", "api"):
        system.start(role)
    stage.faults.note("all restarted (broker and Redis empty)")
    stage.faults.repaired()
    await wait_ready(system.base_url)
    await system.wait_worker_assigned(times=assigned + 1)


async def duplicate_deliveries(stage: Stage) -> None:
    """Every request event sent so far, queued again newest first (reordered), twice (duplicated); through the
    outbox, so the relay stays the topic's only producer and the copies land among the real requests."""
    conn = await stage.system.db()
    try:
        for copy in (1, 2):
            copied = await conn.execute(
                "INSERT INTO outbox (topic, key, payload, headers)"
                " SELECT topic, key, payload, headers || jsonb_build_object('chaos-copy', $2::text)"
                " FROM outbox WHERE topic = $1 AND sent_at IS NOT NULL ORDER BY id DESC",
                PUBLISH_REQUESTED_TOPIC,
                str(copy),
            )
            stage.faults.note(f"re-delivered {copied.split()[-1]} events in reverse order")
    finally:
        await conn.close()
    stage.faults.repaired()


async def one_published_event_per_issue(stage: Stage, result: ChaosResult) -> None:
    conn = await stage.system.db()
    try:
        published = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE topic <> $1 AND headers->>'event-type' = 'CouponPublished'"
            " AND convert_from(payload, 'UTF8')::jsonb->>'couponId' = $2",
            PUBLISH_REQUESTED_TOPIC,
            str(stage.coupon_id),
        )
    finally:
        await conn.close()
    assert published == result.issued  # each request decided once: no coupon event published twice


POISON: list[bytes] = [
    b"\x00\xff not json at all",
    b"{}",
    b'{"type":"CouponPublishRequested","version":1,"requestId":"p1","userId":"seven","couponId":1,'
    b'"requestedAt":"2026-01-01T00:00:00Z"}',
    b'{"type":"CouponPublishRequested","version":1,"requestId":"p2","userId":7,"couponId":1,'
    b'"requestedAt":"2026-01-01T00:00:00Z","extra":"field"}',
    b'{"type":"CouponPublishRequested","version":1,"requestId":"p3","userId":0,"couponId":1,'
    b'"requestedAt":"2026-01-01T00:00:00Z"}',
    b'{"type":"CouponPublishRequested","version":9,"requestId":"p4","userId":7,"couponId":1,'
    b'"requestedAt":"2026-01-01T00:00:00"}',
    b"[" * 5000,
]
POISON_COPIES = 3


async def poison_records(stage: Stage) -> None:
    """Malformed records on the coupon's partition, among the real requests, in a seeded order."""
    records = POISON * POISON_COPIES
    stage.rng.shuffle(records)
    conn = await stage.system.db()
    try:
        for payload in records:
            await conn.execute(
                "INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
                PUBLISH_REQUESTED_TOPIC,
                str(stage.coupon_id),
                payload,
                json.dumps({"event-type": "CouponPublishRequested"}),
            )
    finally:
        await conn.close()
    stage.faults.note(f"{len(records)} poison records")
    stage.faults.repaired()


async def poison_parked(stage: Stage, result: ChaosResult) -> None:
    system = stage.system

    async def dead_letters() -> int:
        listing = (await asyncio.to_thread(system.run, "dlq", "list")).stderr.decode()
        found = re.search(r"(\d+) dead letter\(s\)", listing)
        return int(found.group(1)) if found else -1

    # Each poison record is parked with its reason (list reads the whole DLQ; the worker moved on past them).
    expected = len(POISON) * POISON_COPIES
    assert await eventually(dead_letters, lambda n: n >= expected, timeout=60, interval=1) == expected
    listing = (await asyncio.to_thread(system.run, "dlq", "list")).stderr.decode()
    assert "MALFORMED" in listing
    assert "outside.coupon.publish.requested.v1[" in listing


async def gate_was_rebuilt(stage: Stage, result: ChaosResult) -> None:
    assert "rebuilt the gate of coupon" in stage.system.log_of("api") + stage.system.log_of("api2")


SCENARIOS: list[Scenario] = [
    Scenario("worker-kill", "worker SIGKILL, restarted", worker_kill),
    Scenario("relay-kill", "relay SIGKILL, restarted", relay_kill),
    Scenario("api-kill", "API SIGKILL (1 of 2), restarted", api_kill, apis=2),
    Scenario("broker-restart", "broker SIGKILL, restarted empty", broker_restart_empty),
    Scenario("redis-flushall", "Redis FLUSHALL", redis_flushall, verify=gate_was_rebuilt),
    Scenario("redis-restart", "Redis SIGKILL, restarted empty", redis_restart_empty, verify=gate_was_rebuilt),
    Scenario("postgres-restart", "PostgreSQL restart", postgres_restart),
    Scenario("postgres-crash", "PostgreSQL crash (immediate stop), restarted", postgres_crash),
    Scenario("all-at-once", "all at once: worker+relay+API+broker+Redis SIGKILL, restarted", all_at_once),
    Scenario(
        "duplicates",
        "duplicated + reordered deliveries",
        duplicate_deliveries,
        verify=one_published_event_per_issue,
    ),
    Scenario("poison", "poison records on the topic", poison_records, verify=poison_parked),
]
