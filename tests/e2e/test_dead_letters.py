"""A request whose processing keeps failing: bounded retries, the DLQ, its unit released, then replayed and issued."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from couponrush.adapters.gate import gate_key, holders_key
from couponrush_bench.harness import Sandbox, System, create_coupon
from couponrush_bench.polling import eventually

CURSED_USER = 4242


@pytest.fixture
async def dlq_system(sandbox: Sandbox) -> AsyncIterator[System]:
    running = await sandbox.start_system("dlq", extra_env={"COUPONRUSH_WORKER_MAX_ATTEMPTS": "4"})
    yield running
    codes = await sandbox.stop_system(running)
    assert set(codes.values()) == {0}, codes


# Slow (`make test-all`): ~30 s, most of it `couponrush dlq` finding the end of the topic by idleness. By
# default, tests/e2e/test_issuing_pipeline.py parks a malformed record on the DLQ, and the unit tests pin
# the bounded retries, the release and the replay.
@pytest.mark.slow
async def test_a_failing_request_is_dead_lettered_released_and_issued_after_replay(dlq_system: System) -> None:
    system = dlq_system
    conn = await system.db()
    redis = system.redis()
    try:
        # A bug that strikes one record every time (not the database being away): a trigger that raises.
        await conn.execute(f"""
            CREATE FUNCTION refuse_cursed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.user_id = {CURSED_USER} THEN RAISE EXCEPTION 'processing bug for user %', NEW.user_id; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER cursed BEFORE INSERT ON user_coupons FOR EACH ROW EXECUTE FUNCTION refuse_cursed();
        """)
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, quantity=2)
            accepted = await client.post(f"/api/v1/users/{CURSED_USER}/coupons/publish", json={"couponId": coupon_id})
            assert accepted.status_code == 200
            request_id = accepted.json()["data"]["requestId"]
            other = await client.post("/api/v1/users/1/coupons/publish", json={"couponId": coupon_id})
            assert other.status_code == 200  # the partition is not stalled behind the bad record

            await eventually(
                lambda: conn.fetchval(
                    "SELECT dead_lettered_at IS NOT NULL FROM coupon_requests WHERE request_id = $1", request_id
                ),
                bool,
                timeout=60,
                what="the failing request dead-lettered",
            )
            await eventually(
                lambda: conn.fetchval("SELECT status FROM coupon_requests WHERE user_id = 1"),
                lambda s: s == "ISSUED",
                timeout=30,
            )
            # Its unit went back: the gate holds only user 1, one unit left to sell.
            assert await redis.hkeys(holders_key(coupon_id)) == [b"1"]  # type: ignore[misc]
            assert await redis.hget(gate_key(coupon_id), "stock") == b"1"  # type: ignore[misc]
            assert system.log_of("worker").count(f"processing request {request_id} failed") == 3

            listing = system.run("dlq", "list").stderr.decode()
            assert "1 dead letter(s)" in listing
            assert re.search(rf"FAILED attempts=4 request={request_id} error='RaiseError: processing bug", listing)
            assert "outside.coupon.publish.requested.v1[" in listing

            await conn.execute("DROP TRIGGER cursed ON user_coupons")  # the bug is fixed
            replay = system.run("dlq", "replay").stderr.decode()
            assert "1 dead letter(s) re-published, 0 kept" in replay

            async def status() -> str:
                body = (await client.get(f"/api/v1/users/{CURSED_USER}/coupons/{coupon_id}/request")).json()
                return str(body["data"]["status"])

            await eventually(status, lambda s: s == "ISSUED", timeout=60, what="the replayed request issued")
            assert await conn.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon_id) == 2
            # Replayed once: the replay group remembers, a second replay finds nothing new.
            assert "0 dead letter(s) re-published" in system.run("dlq", "replay").stderr.decode()
    finally:
        await redis.aclose()
        await conn.close()
