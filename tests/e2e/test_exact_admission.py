"""OK means you get the coupon: the reserving gate under a real crowd, with one and two API processes.

By default the Redis-flush drop runs: it asserts everything the plain drop does, through a gate rebuild.
The plain and the two-process drops are ``slow`` (``make test-all``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from couponrush_bench.harness import Sandbox, System, create_coupon
from couponrush_bench.invariants import Told, assert_ok_means_issued
from tests.support.drop import crowd, run_drop


async def new_coupon(system: System, quantity: int) -> int:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        return await create_coupon(client, quantity=quantity)


async def ok_means_issued(system: System, coupon_id: int, answers: Sequence[Told], quantity: int) -> None:
    redis = system.redis()
    try:
        await assert_ok_means_issued(system.database_url, redis, coupon_id, answers, quantity)
    finally:
        await redis.aclose()


@pytest.mark.slow
async def test_5000_requests_from_2000_users_for_100_coupons_tell_exactly_100_ok(system: System) -> None:
    coupon_id = await new_coupon(system, 100)
    answers = await run_drop([system.base_url], coupon_id, crowd(2000, 5000, first_user=10_000), concurrency=200)
    await ok_means_issued(system, coupon_id, answers, quantity=100)


@pytest.mark.slow
async def test_the_same_drop_served_by_two_api_processes_at_once(system: System) -> None:
    second = await system.start_second_api()
    coupon_id = await new_coupon(system, 100)
    answers = await run_drop(
        [system.base_url, second], coupon_id, crowd(2000, 5000, first_user=20_000), concurrency=200
    )
    await ok_means_issued(system, coupon_id, answers, quantity=100)
    assert system.stop("api2") == 0


@pytest.fixture
async def flushed_system(sandbox: Sandbox) -> AsyncIterator[System]:
    """A system of its own: flushing Redis sends every coupon of the system through a rebuild (503s meanwhile),
    which the tests sharing the folder's system must not see."""
    running = await sandbox.start_system("flushed")
    yield running
    codes = await sandbox.stop_system(running)
    assert set(codes.values()) == {0}, codes


async def test_redis_flushed_in_the_middle_of_a_drop_changes_no_total(flushed_system: System) -> None:
    system = flushed_system
    coupon_id = await new_coupon(system, 100)
    redis = system.redis()

    async def flush() -> None:
        await redis.flushdb()  # Redis keeps nothing on disk: a restart looks exactly like this

    try:
        answers = await run_drop(
            [system.base_url], coupon_id, crowd(2000, 5000, first_user=30_000), concurrency=200, midway=flush
        )
    finally:
        await redis.aclose()
    await ok_means_issued(system, coupon_id, answers, quantity=100)
    assert "rebuilt the gate of coupon" in system.log_of("api")
