"""Shared fixtures: the real services, isolated for tests.

- PostgreSQL: database ``couponrush_test`` (re-created each session, then migrated), tables
  emptied before each test that asks for ``db``.
- Redis: logical database 15, flushed before each test that asks for ``redis``.
- Kafka protocol: one embedded Tansu broker per session on a free port; tests use their own
  topic names, so records never leak between tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from redis.asyncio import Redis

from couponrush.adapters.db import create_pool, ensure_database, migrate, normalize_dsn
from couponrush.config import Settings
from couponrush.dev.broker import EmbeddedBroker, free_port

TEST_DATABASE_URL = os.environ.get(
    "COUPONRUSH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/couponrush_test"
)
TEST_REDIS_URL = os.environ.get("COUPONRUSH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

pytest_plugins = ["tests.support.fixtures_marks"]


@pytest.fixture(scope="session")
async def database_url() -> str:
    dsn = normalize_dsn(TEST_DATABASE_URL)
    admin = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        name = dsn.rsplit("/", 1)[1]
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=2, max_size=30)
    yield pool
    await pool.close()


@pytest.fixture
async def db(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute("TRUNCATE user_coupons, coupon_requests, outbox, coupons RESTART IDENTITY CASCADE")
    return pool


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    instance = EmbeddedBroker(port=free_port())
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def settings(database_url: str, topic_prefix: str) -> Settings:
    """Settings for in-process tests: the test database and Redis, and topics of this test's own."""
    return Settings(
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        kafka_bootstrap_servers="",
        admin_token="test-admin-token",
        publish_requested_topic=topic_prefix + "outside.coupon.publish.requested.v1",
        published_topic=topic_prefix + "outside.coupon.published.v1",
        consumer_group=topic_prefix + "coupon",
    )
