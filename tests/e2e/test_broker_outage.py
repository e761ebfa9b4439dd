"""A request accepted while the broker is down is issued once the broker is back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from couponrush_bench.harness import Sandbox, System, create_coupon
from couponrush_bench.polling import eventually


@pytest.fixture
async def outage_system(sandbox: Sandbox) -> AsyncIterator[System]:
    running = await sandbox.start_system("outage")
    yield running
    codes = await sandbox.stop_system(running)
    assert codes == {"relay": 0, "worker": 0, "api": 0}, codes


async def test_a_request_accepted_during_a_broker_outage_is_issued_after_it(outage_system: System) -> None:
    system = outage_system
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        coupon_id = await create_coupon(client, quantity=3)
        warm_up = await client.post("/api/v1/users/1/coupons/publish", json={"couponId": coupon_id})
        assert warm_up.status_code == 200

        async def held_by(user: int) -> int:
            return len((await client.get(f"/api/v1/users/{user}/coupons")).json()["data"])

        await eventually(lambda: held_by(1), lambda n: n == 1, timeout=30, what="issuing before the outage")

        system.broker.stop()  # Tansu keeps nothing: it comes back empty
        during = await client.post("/api/v1/users/2/coupons/publish", json={"couponId": coupon_id})
        assert during.status_code == 200  # accepted: durably recorded (its row waits for the relay)
        conn = await system.db()
        try:
            unsent = await conn.fetchval("SELECT count(*) FROM coupon_requests WHERE relayed_at IS NULL")
            assert unsent >= 1
            system.broker.start()
            await eventually(lambda: held_by(2), lambda n: n == 1, timeout=90, interval=0.2, what="issue after outage")
            assert await conn.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon_id) == 2
            assert await conn.fetchval("SELECT count(*) FROM user_coupons WHERE user_id = 1") == 1
        finally:
            await conn.close()


@pytest.fixture
async def redrive_system(sandbox: Sandbox) -> AsyncIterator[System]:
    running = await sandbox.start_system("redrive", extra_env={"COUPONRUSH_REDRIVE_AFTER_S": "2"})
    yield running
    codes = await sandbox.stop_system(running)
    assert set(codes.values()) == {0}, codes


# Slow (`make test-all`): the chaos scenario "broker killed, restarted empty" re-drives too (`make chaos`).
@pytest.mark.slow
async def test_a_request_the_broker_acknowledged_and_then_lost_is_re_driven_and_issued(
    redrive_system: System,
) -> None:
    system = redrive_system
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        coupon_id = await create_coupon(client, quantity=3)
        system.stop("worker")  # nobody consumes: the record only lives in the broker
        accepted = await client.post("/api/v1/users/5/coupons/publish", json={"couponId": coupon_id})
        assert accepted.status_code == 200
        conn = await system.db()
        try:
            await eventually(
                lambda: conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"),
                lambda unsent: unsent == 0,
                timeout=30,
                what="the broker acknowledging the request",
            )
            system.broker.stop()
            system.broker.start()  # ...and losing it: Tansu comes back empty
            system.start("worker")

            async def status() -> str:
                body = (await client.get(f"/api/v1/users/5/coupons/{coupon_id}/request")).json()
                return str(body["data"]["status"])

            await eventually(status, lambda s: s == "ISSUED", timeout=90, interval=0.2, what="issued after re-drive")
            redrives = await conn.fetchval("SELECT redrives FROM coupon_requests WHERE user_id = 5")
            assert redrives >= 1
            assert await conn.fetchval("SELECT count(*) FROM user_coupons WHERE user_id = 5") == 1
        finally:
            await conn.close()
    assert "re-drove" in system.log_of("relay")
