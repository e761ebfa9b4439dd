"""OK means you get the coupon: the reserving gate under a real crowd, with one and two API processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.drop_checks import assert_ok_means_issued
from tests.support.drop import crowd, run_drop
from tests.support.system import RunningSystem, create_coupon, start_system, stop_system


@pytest.fixture(scope="module")
async def exact(e2e_logs: Path) -> AsyncIterator[RunningSystem]:
    running = await start_system("exact", e2e_logs, db_name="couponrush_e2e_exact", redis_db=12)
    yield running
    codes = stop_system(running)
    assert set(codes.values()) == {0}, codes


async def new_coupon(system: RunningSystem, quantity: int) -> int:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        return await create_coupon(client, quantity=quantity)


async def test_5000_requests_from_2000_users_for_100_coupons_tell_exactly_100_ok(exact: RunningSystem) -> None:
    coupon_id = await new_coupon(exact, 100)
    answers = await run_drop([exact.base_url], coupon_id, crowd(2000, 5000, first_user=10_000), concurrency=200)
    await assert_ok_means_issued(exact, coupon_id, answers, quantity=100)


async def test_the_same_drop_served_by_two_api_processes_at_once(exact: RunningSystem) -> None:
    second = await exact.start_second_api()
    coupon_id = await new_coupon(exact, 100)
    answers = await run_drop([exact.base_url, second], coupon_id, crowd(2000, 5000, first_user=20_000), concurrency=200)
    await assert_ok_means_issued(exact, coupon_id, answers, quantity=100)
    assert exact.stop("api2") == 0


async def test_redis_flushed_in_the_middle_of_a_drop_changes_no_total(exact: RunningSystem) -> None:
    coupon_id = await new_coupon(exact, 100)
    redis = exact.redis()

    async def flush() -> None:
        await redis.flushdb()  # Redis keeps nothing on disk: a restart looks exactly like this

    try:
        answers = await run_drop(
            [exact.base_url], coupon_id, crowd(2000, 5000, first_user=30_000), concurrency=200, midway=flush
        )
    finally:
        await redis.aclose()
    await assert_ok_means_issued(exact, coupon_id, answers, quantity=100)
    assert "rebuilt the gate of coupon" in exact.log_of("api")
