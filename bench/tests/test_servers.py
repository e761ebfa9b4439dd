"""The state a run owns: its databases (named with its prefix, all dropped at the end, nothing else ever)
and a redis-server of its own."""

from __future__ import annotations

import asyncpg
import pytest
from redis.asyncio import Redis
from tests.support.fixtures import DATABASES, TEST_PG_BASE

from couponrush.dev.broker import port_open
from couponrush_bench.servers import OwnRedis, ScratchDatabases, run_prefix


async def test_a_run_drops_exactly_its_own_databases() -> None:
    mine = ScratchDatabases(TEST_PG_BASE, run_prefix(DATABASES.prefix + "s"))
    neighbour = ScratchDatabases(TEST_PG_BASE, run_prefix(DATABASES.prefix + "s"))  # another run, same base
    admin = await asyncpg.connect(f"{TEST_PG_BASE}/postgres")
    try:
        for scratch in (mine, neighbour):
            for name in ("one", "two"):
                await admin.execute(f'CREATE DATABASE "{scratch.name(name)}"')
        assert await mine.drop_all() == [mine.name("one"), mine.name("two")]
        assert await mine.existing() == []
        assert await neighbour.existing() == [neighbour.name("one"), neighbour.name("two")]  # untouched
    finally:
        await neighbour.drop_all()
        await admin.close()


def test_a_prefix_too_short_to_name_one_run_is_refused() -> None:
    with pytest.raises(ValueError, match="too short"):
        ScratchDatabases(TEST_PG_BASE, "t_")


async def test_own_redis_serves_its_databases_and_is_gone_after_stop() -> None:
    server = OwnRedis(databases=4)
    await server.start()
    try:
        client = Redis.from_url(server.url(3))
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        await client.aclose()
    finally:
        server.stop()
    assert not port_open("127.0.0.1", server.port)
