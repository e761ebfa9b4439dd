"""Services lost mid-drop: the broker restarted empty, Redis restarted empty, PostgreSQL restarted."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import pytest

from couponrush_bench.polling import eventually
from tests.chaos.harness import Chaos, Faults, chaos_drop
from tests.support.faults import restart_postgres
from tests.support.fixtures import TEST_PG_BASE

pytestmark = pytest.mark.slow


async def test_broker_killed_and_restarted_empty(chaos: Chaos) -> None:
    system, _ = await chaos.start("broker")

    async def fault(faults: Faults) -> None:
        conn = await system.db()
        try:
            before = await conn.fetchval("SELECT count(*) FROM coupon_requests")
            system.broker.stop()
            faults.note("broker killed (Tansu: every record, topic and offset lost)")
            # During the outage requests are still accepted (recorded in the outbox): wait for some.
            await eventually(
                lambda: conn.fetchval("SELECT count(*) FROM coupon_requests"),
                lambda n: n >= before + 30,
                timeout=60,
                what="requests accepted while the broker is down",
            )
            unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            assert unsent > 0
        finally:
            await conn.close()
        system.broker.start()
        faults.note("broker restarted empty")

    result = await chaos_drop(system, "3. broker killed, restarted empty", fault)
    assert result.answers.get("200") == result.quantity  # accepted during the outage too, and all issued


async def test_redis_restarted_empty_mid_drop(chaos: Chaos) -> None:
    system, redis = await chaos.start("redis")

    async def fault(faults: Faults) -> None:
        await redis.restart()
        faults.note("redis-server SIGKILL + restarted empty")
        await asyncio.sleep(0)

    await chaos_drop(system, "4. Redis restarted empty mid-drop", fault)
    assert "rebuilt the gate of coupon" in system.log_of("api")


@pytest.mark.skipif(
    (urlsplit(TEST_PG_BASE).port or 5432) == 5432 and os.environ.get("COUPONRUSH_CHAOS_PG_RESTART") != "1",
    reason="restarts the PostgreSQL cluster of COUPONRUSH_TEST_PG_BASE: point it at a cluster of your own, "
    "or set COUPONRUSH_CHAOS_PG_RESTART=1 where nobody else uses the one on 5432 (CI)",
)
async def test_postgresql_restarted_mid_drop(chaos: Chaos) -> None:
    system, _ = await chaos.start("postgres")

    async def fault(faults: Faults) -> None:
        faults.note("pg_ctlcluster restart")
        await asyncio.to_thread(restart_postgres, TEST_PG_BASE)

    await chaos_drop(system, "5. PostgreSQL restarted mid-drop", fault)
