"""An API killed between reserving a unit and recording the request does not keep the unit: it comes back
within seconds (the grace period), not at the next reconcile, and the lost request can never be recorded."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from couponrush.adapters.gate import holders_key
from couponrush_bench.harness import Sandbox, System, create_coupon
from tests.support.polling import eventually

GRACE_S = 3.0


@pytest.fixture
async def orphan_system(sandbox: Sandbox) -> AsyncIterator[System]:
    running = await sandbox.start_system(
        "orphan",
        # Reconcile far away: what brings the unit back must be the orphan sweep, not the periodic reconcile.
        extra_env={"COUPONRUSH_REBUILD_GRACE_S": str(GRACE_S), "COUPONRUSH_RECONCILE_INTERVAL_S": "600"},
    )
    yield running
    codes = await sandbox.stop_system(running)
    assert set(codes.values()) <= {0}, codes


async def test_the_unit_of_a_request_whose_api_died_before_recording_it_comes_back(
    orphan_system: System,
) -> None:
    system = orphan_system
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        coupon_id = await create_coupon(client, 1)
    redis = system.redis()
    blocker = await system.db()
    try:
        # A stalled database: the API reserves user 7's unit in Redis, then waits on its insert.
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE coupon_requests IN ACCESS EXCLUSIVE MODE")
        hanging = asyncio.create_task(_publish(system.base_url, 7, coupon_id))

        async def holders() -> dict[bytes, bytes]:
            return await redis.hgetall(holders_key(coupon_id))  # type: ignore[no-any-return,misc]

        await eventually(holders, lambda h: b"7" in h, timeout=10, what="user 7's unit reserved")
        lost_request = (await holders())[b"7"].decode()
        system.stop("api", signal.SIGKILL)  # dies between the reservation and the commit
        killed_at = time.monotonic()
        await lock.rollback()
        with contextlib.suppress(httpx.HTTPError):
            await hanging
    finally:
        await blocker.close()

    system.start("api")
    await system.wait_ready()
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:

        async def someone_else() -> int:
            return (await client.post("/api/v1/users/8/coupons/publish", json={"couponId": coupon_id})).status_code

        await eventually(someone_else, lambda s: s == 200, timeout=GRACE_S + 10, what="the unit back for user 8")
        back_after = time.monotonic() - killed_at
    assert back_after < GRACE_S + 6, back_after  # the grace and a sweep, not the 600 s reconcile

    conn = await system.db()
    try:
        lost = await conn.fetchrow("SELECT status, reason FROM coupon_requests WHERE request_id = $1", lost_request)
    finally:
        await conn.close()
    assert lost is not None
    assert (lost["status"], lost["reason"]) == ("REJECTED", "NOT_RECORDED")  # fenced: never recordable now
    assert "never recorded" in system.log_of("worker")

    async def issued() -> list[int]:
        return await issued_users(system, coupon_id)

    await eventually(issued, lambda users: users == [8], timeout=15, what="user 8 issued, and nobody else")
    await redis.aclose()


async def issued_users(system: System, coupon_id: int) -> list[int]:
    conn = await system.db()
    try:
        rows = await conn.fetch("SELECT user_id FROM user_coupons WHERE coupon_id = $1", coupon_id)
        return [r["user_id"] for r in rows]
    finally:
        await conn.close()


async def _publish(base_url: str, user_id: int, coupon_id: int) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return (await client.post(f"/api/v1/users/{user_id}/coupons/publish", json={"couponId": coupon_id})).status_code
