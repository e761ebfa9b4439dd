"""`couponrush topics migrate` against running relay and worker processes, in the middle of a drop."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from couponrush_bench.harness import Sandbox, create_coupon
from couponrush_bench.invariants import settle
from couponrush_bench.polling import eventually
from tests.support.drop import Answer, run_drop
from tests.support.kafka import read_all

V1 = "outside.coupon.publish.requested.v1"
V2 = "outside.coupon.publish.requested.v2"


async def test_migrating_the_request_topic_mid_drop_switches_relay_and_worker_without_restart(sandbox: Sandbox) -> None:
    system = await sandbox.start_system("topics")
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, quantity=5000)
        next_user = 60_000

        async def wave(size: int) -> list[Answer]:
            nonlocal next_user
            users = list(range(next_user, next_user + size))
            next_user += size
            return await run_drop([system.base_url], coupon_id, users, concurrency=20)

        answers = await wave(100)  # these go to v1
        # ...once the relay has sent them (its first pass opens the producer; on a busy machine the switch
        # could otherwise come first and send them to v2).
        conn = await system.db()
        try:
            await eventually(
                lambda: conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"),
                lambda unsent: unsent == 0,
                timeout=30,
                what="the first wave relayed to v1",
            )
        finally:
            await conn.close()
        migration = asyncio.create_task(
            asyncio.to_thread(system.run, "topics", "migrate", "--to", "v2", "--partitions", "5")
        )
        # Keep the drop going until the relay has switched, and a while after: requests on both sides.
        while "switched the request topic" not in system.log_of("relay"):
            answers += await wave(20)
        answers += await wave(100)
        migrated = await asyncio.wait_for(migration, 90)
        assert "is the only version in use" in migrated.stdout.decode() + migrated.stderr.decode()

        told_ok = sorted(a.user_id for a in answers if a.status == 200)
        assert len(told_ok) == len(answers)
        settled = await settle(system.database_url, coupon_id)
        holders, decisions = settled.holders, settled.decisions
        assert sorted(holders) == told_ok  # nothing lost, nothing doubled
        assert decisions == Counter({("ISSUED", None): len(answers)})

        status = system.run("topics", "status").stdout.decode()
        rows = {line.split("│")[2].strip(): line for line in status.splitlines() if line.count("│") > 3}
        assert "RETIRED" in rows[V1], status
        assert "3/3" in rows[V1], status
        assert "ACTIVE" in rows[V2], status
        assert "relay writes: " + V2 in status
        assert "worker reads: " + V2 in status
        assert f"switched the request topic from {V1} to {V2}" in system.log_of("relay")
        assert f"worker moves from {V1} to {V2}" in system.log_of("worker")

        conn = await system.db()
        try:
            # A fresh v1: each partition's marker offset counts the requests before it.
            on_v1 = int(await conn.fetchval("SELECT sum(marker_offset) FROM topic_version_drains WHERE version = 1"))
            decided = {
                r["request_id"]: r["decided_at"]
                for r in await conn.fetch(
                    "SELECT request_id, decided_at FROM coupon_requests WHERE coupon_id = $1", coupon_id
                )
            }
        finally:
            await conn.close()
        assert 100 <= on_v1 < len(answers)  # both versions carried requests of this coupon
        # + one marker per partition
        v1_records = await read_all(system.broker.bootstrap, V1, on_v1 + 3)
        via_v1 = {r.headers["request-id"].decode() for r in v1_records if "request-id" in r.headers}
        assert len(via_v1) == on_v1
        via_v2 = set(decided) - via_v1
        # Across the switch: every request relayed to v1 was decided before any relayed to v2.
        assert max(decided[r] for r in via_v1) < min(decided[r] for r in via_v2)
    finally:
        codes = await sandbox.stop_system(system)
    assert set(codes.values()) == {0}, codes
