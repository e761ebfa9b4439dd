"""Following a request: PENDING, then ISSUED, or REJECTED with the reason (and its unit given back)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from couponrush.adapters.gate import gate_key, holders_key
from couponrush_bench.harness import ADMIN_TOKEN, System, create_coupon
from couponrush_bench.polling import eventually


@pytest.fixture
def lifecycle(system: System) -> System:
    """The shared system: these tests stop and restart its worker, and wait until it is back."""
    return system


@pytest.fixture
async def client(lifecycle: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=lifecycle.base_url, timeout=30) as http:
        yield http


async def status_of(client: httpx.AsyncClient, user_id: int, coupon_id: int) -> dict[str, object]:
    response = await client.get(f"/api/v1/users/{user_id}/coupons/{coupon_id}/request")
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()["data"]
    return data


async def test_a_request_walks_from_pending_to_issued(lifecycle: System, client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, quantity=5)
    assigned = lifecycle.worker_assignments()
    lifecycle.stop("worker")  # nothing is issued while it is away
    try:
        accepted = (await client.post("/api/v1/users/41/coupons/publish", json={"couponId": coupon_id})).json()
        pending = await status_of(client, 41, coupon_id)
        assert (pending["status"], pending["requestId"]) == ("PENDING", accepted["data"]["requestId"])
        assert pending["issuedAt"] is None
    finally:
        lifecycle.start("worker")
    await lifecycle.wait_worker_assigned(times=assigned + 1)
    issued = await eventually(
        lambda: status_of(client, 41, coupon_id), lambda s: s["status"] == "ISSUED", timeout=30, what="ISSUED"
    )
    assert issued["issuedAt"] is not None
    assert issued["reason"] is None


async def test_a_request_whose_coupon_expires_before_issuing_is_rejected_and_gives_its_unit_back(
    lifecycle: System, client: httpx.AsyncClient
) -> None:
    coupon_id = await create_coupon(client, quantity=5, expires_in=timedelta(seconds=3))
    assigned = lifecycle.worker_assignments()
    lifecycle.stop("worker")
    try:
        response = await client.post("/api/v1/users/42/coupons/publish", json={"couponId": coupon_id})
        assert response.status_code == 200
        assert (await status_of(client, 42, coupon_id))["status"] == "PENDING"

        async def ask_again() -> httpx.Response:
            return await client.post("/api/v1/users/43/coupons/publish", json={"couponId": coupon_id})

        expired = await eventually(
            ask_again, lambda r: r.json()["data"].get("reason") == "EXPIRED", timeout=10, interval=0.2, what="expiry"
        )
        assert expired.json()["data"]["reason"] == "EXPIRED"
    finally:
        lifecycle.start("worker")
    await lifecycle.wait_worker_assigned(times=assigned + 1)
    rejected = await eventually(
        lambda: status_of(client, 42, coupon_id), lambda s: s["status"] == "REJECTED", timeout=30, what="REJECTED"
    )
    assert rejected["reason"] == "EXPIRED"
    redis = lifecycle.redis()

    async def gate_state() -> tuple[int, bytes | None]:
        held: int = await redis.hlen(holders_key(coupon_id))  # type: ignore[misc]
        stock: bytes | None = await redis.hget(gate_key(coupon_id), "stock")  # type: ignore[misc]
        return held, stock

    try:
        # The worker releases right after its commit: every reserved unit comes back.
        await eventually(gate_state, lambda s: s == (0, b"5"), timeout=15, what="units given back")
    finally:
        await redis.aclose()


async def test_no_request_yet_is_a_404_in_the_envelope(client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, quantity=1)
    response = await client.get(f"/api/v1/users/999/coupons/{coupon_id}/request")
    assert (response.status_code, response.json()["data"]["reason"]) == (404, "NO_REQUEST")


async def test_closing_refuses_at_once_and_reopening_admits_again(client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, quantity=5)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await client.post(f"/api/v1/coupons/{coupon_id}/close")).status_code == 401
    closed = await client.post(f"/api/v1/coupons/{coupon_id}/close", headers=admin)
    assert (closed.status_code, closed.json()["data"]["status"]) == (200, "UNPUBLISHABLE")
    refused = await client.post("/api/v1/users/51/coupons/publish", json={"couponId": coupon_id})
    assert (refused.status_code, refused.json()["data"]["reason"]) == (409, "NOT_OPEN")
    reopened = await client.post(f"/api/v1/coupons/{coupon_id}/open", headers=admin)
    assert (reopened.status_code, reopened.json()["data"]["status"]) == (200, "PUBLISHABLE")
    accepted = await client.post("/api/v1/users/51/coupons/publish", json={"couponId": coupon_id})
    assert accepted.status_code == 200
    twice = await client.post("/api/v1/users/51/coupons/publish", json={"couponId": coupon_id})
    assert (twice.status_code, twice.json()["data"]["reason"]) == (409, "ALREADY_REQUESTED")
    unknown = await client.post("/api/v1/coupons/987654/close", headers=admin)
    assert unknown.status_code == 404


async def test_expiry_turns_the_reports_flag_false_without_any_request(
    lifecycle: System, client: httpx.AsyncClient
) -> None:
    coupon_id = await create_coupon(client, quantity=5, expires_in=timedelta(seconds=2))
    redis = lifecycle.redis()
    try:
        assert await redis.get(f"coupon:available:{coupon_id}") == b"true"
        await eventually(
            lambda: redis.get(f"coupon:available:{coupon_id}"), lambda v: v == b"false", timeout=15, what="flag off"
        )
        assert await redis.get(f"coupon:closed-reason:{coupon_id}") == b"EXPIRED"
    finally:
        await redis.aclose()
