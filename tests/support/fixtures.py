"""The real services, isolated for this run of the suite, and gone when it ends.

- PostgreSQL: every database this run uses is named ``COUPONRUSH_TEST_DB_PREFIX`` + a run id + a name,
  on the server ``COUPONRUSH_TEST_PG_BASE``; each is dropped when its user is done (fixture finalizers),
  and whatever carries the run's prefix is dropped at session finish, which then checks none is left.
  ``COUPONRUSH_TEST_DATABASE_URL`` names the in-process tests' database instead: used as given (created
  and dropped only if it did not exist), its tables emptied before each test that asks for ``db``.
- Redis: a ``redis-server`` of the session's own on a free port: in-process tests use its database 0
  (flushed before each test that asks for ``redis``), each running system another database of it.
  No shared Redis is ever touched.
- Kafka protocol: one embedded broker per session for in-process tests (tests use their own topic
  names); each running system has its own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from couponrush.adapters.db import create_pool, ensure_database, migrate, normalize_dsn
from couponrush.config import Settings
from couponrush.dev.broker import EmbeddedBroker, free_port
from couponrush_bench.harness import Sandbox, System
from couponrush_bench.servers import OwnRedis, ScratchDatabases, run_prefix

TEST_PG_BASE = os.environ.get("COUPONRUSH_TEST_PG_BASE", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
TEST_DB_PREFIX = os.environ.get("COUPONRUSH_TEST_DB_PREFIX", "couponrush_test_")
TEST_DATABASE_URL = os.environ.get("COUPONRUSH_TEST_DATABASE_URL")
# Every database of this run, and only those, start with this.
DATABASES = ScratchDatabases(TEST_PG_BASE, run_prefix(TEST_DB_PREFIX))


@pytest.fixture(scope="session")
async def own_redis(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OwnRedis]:
    server = OwnRedis(databases=256, log_dir=tmp_path_factory.mktemp("redis"))
    await server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def e2e_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="session")
async def sandbox(own_redis: OwnRedis, e2e_logs: Path) -> AsyncIterator[Sandbox]:
    """Starts systems on this run's state; at the end stops what still runs and drops the run's databases."""
    box = Sandbox(DATABASES, log_dir=e2e_logs, redis=own_redis)
    yield box
    await box.close()


@pytest.fixture(scope="package")
async def system(sandbox: Sandbox) -> AsyncIterator[System]:
    """The system shared by the tests of a folder that only create their own coupons and users and leave it
    running as they found it (default settings); one start-up instead of one per module."""
    running = await sandbox.start_system("main")
    yield running
    codes = await sandbox.stop_system(running)
    # Every role shuts down cleanly on SIGTERM: finishes, commits, exits 0 (also those a test added).
    assert {role: codes.get(role) for role in ("relay", "worker", "api")} == {"relay": 0, "worker": 0, "api": 0}, (
        codes,
        running.log_of("worker")[-3000:],
    )
    assert set(codes.values()) == {0}, codes


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """The in-process tests' database, migrated."""
    dsn = normalize_dsn(TEST_DATABASE_URL or DATABASES.url("integration"))
    created = await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield dsn
    if created:
        admin = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=2, max_size=30)
    yield pool
    await pool.close()


@pytest.fixture
async def db(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute("TRUNCATE user_coupons, coupon_requests, outbox, coupons RESTART IDENTITY CASCADE")
    return pool


@pytest.fixture(scope="session")
def redis_url(own_redis: OwnRedis) -> str:
    return own_redis.url(0)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()  # database 0 of the session's own redis-server
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
def settings(database_url: str, redis_url: str, topic_prefix: str) -> Settings:
    """Settings for in-process tests: the test database and Redis, and topics of this test's own."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        kafka_bootstrap_servers="",
        admin_token="test-admin-token",
        publish_requested_topic=topic_prefix + "outside.coupon.publish.requested.v1",
        published_topic=topic_prefix + "outside.coupon.published.v1",
        consumer_group=topic_prefix + "coupon",
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop whatever database of this run is still there (a crash before a finalizer, one a subprocess
    made), then check that none is left: the suite leaves the PostgreSQL server as it found it."""
    if not DATABASES.used:
        return  # nothing asked for a database (e.g. `pytest -m unit`): don't even connect
    dropped = asyncio.run(DATABASES.drop_all())
    left = asyncio.run(DATABASES.existing())
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and dropped:
        reporter.write_line(f"dropped at session finish (left by a failure): {', '.join(dropped)}", yellow=True)
    if left:
        if reporter is not None:
            reporter.write_line(f"databases of this run left behind: {', '.join(left)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter is not None:
        reporter.write_line(f"no database named {DATABASES.prefix}* is left on {TEST_PG_BASE}")
