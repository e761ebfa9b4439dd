"""The running system over HTTP: the report's own end-to-end test, the rush, and bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from confluent_kafka import Producer

from couponrush.adapters.kafka import producer_config
from couponrush_bench.harness import ADMIN_TOKEN, System, coupon_body, create_coupon
from couponrush_bench.invariants import settle
from couponrush_bench.polling import eventually
from tests.support.kafka import find_record, read_all


@pytest.fixture
async def client(system: System) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30, limits=limits) as http:
        yield http


async def holdings(client: httpx.AsyncClient, user_id: int) -> list[dict[str, object]]:
    response = await client.get(f"/api/v1/users/{user_id}/coupons")
    assert response.status_code == 200
    data: list[dict[str, object]] = response.json()["data"]
    return data


async def test_a_requested_coupon_is_issued_and_the_last_one_closes_the_gate(
    system: System, client: httpx.AsyncClient
) -> None:
    """The report's CouponControllerE2ETest: request over HTTP, then wait until the user holds it."""
    coupon_id = await create_coupon(client, quantity=1)
    redis = system.redis()
    assert await redis.get(f"coupon:available:{coupon_id}") == b"true"

    response = await client.post("/api/v1/users/1001/coupons/publish", json={"couponId": coupon_id})

    assert response.status_code == 200
    body = response.json()
    assert (body["code"], body["message"]) == (200, "OK")
    assert body["data"]["couponId"] == coupon_id
    assert body["data"]["requestId"]
    held = await eventually(
        lambda: holdings(client, 1001), lambda h: len(h) == 1, timeout=30, what="user 1001 holding the coupon"
    )
    assert held[0]["couponId"] == coupon_id
    assert set(held[0]) == {"couponId", "userId", "name", "discountRate", "issuedAt", "expiredAt"}
    await eventually(
        lambda: redis.get(f"coupon:available:{coupon_id}"), lambda v: v == b"false", timeout=10, what="flag false"
    )
    coupon = (await client.get(f"/api/v1/coupons/{coupon_id}")).json()["data"]
    assert (coupon["issuedCount"], coupon["remainingQuantity"]) == (1, 0)
    late = await client.post("/api/v1/users/1002/coupons/publish", json={"couponId": coupon_id})
    assert late.status_code == 409
    assert late.json()["data"]["reason"] == "SOLD_OUT"
    await redis.aclose()

    request_id = body["data"]["requestId"].encode()
    published = await find_record(
        system.broker.bootstrap, "outside.coupon.published.v1", lambda r: r.headers.get("request-id") == request_id
    )
    event = json.loads(published.value or b"{}")
    assert (event["type"], event["userId"], event["couponId"]) == ("CouponPublished", 1001, coupon_id)
    assert published.key == str(coupon_id).encode()


async def test_300_concurrent_requests_from_200_users_for_50_coupons(system: System, client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, quantity=50)
    users = [2000 + n for n in range(200)] + [2000 + n for n in range(100)]  # 100 users tap twice

    responses = await asyncio.gather(
        *(client.post(f"/api/v1/users/{u}/coupons/publish", json={"couponId": coupon_id}) for u in users)
    )

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    assert statuses[200] == 50  # the reserving gate tells OK exactly as many times as there are coupons
    assert all(r.json()["code"] == r.status_code for r in responses)
    reasons = {r.json()["data"]["reason"] for r in responses if r.status_code == 409}
    assert reasons <= {"SOLD_OUT", "ALREADY_REQUESTED"}
    settled = await settle(system.database_url, coupon_id)
    holders, decided = settled.holders, settled.decisions
    conn = await system.db()
    try:
        issued_count = await conn.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon_id)
    finally:
        await conn.close()
    assert len(holders) == 50
    assert len(set(holders)) == 50  # nobody twice
    assert set(holders) <= set(users)
    assert issued_count == 50
    # Every accepted request was decided truthfully: issued, or refused with its reason recorded.
    assert decided == Counter({("ISSUED", None): 50})  # every request told OK was issued, none refused later
    told_ok = {u for u, r in zip(users, responses, strict=True) if r.status_code == 200}
    assert told_ok == set(holders)
    redis = system.redis()
    assert await redis.get(f"coupon:available:{coupon_id}") == b"false"
    await redis.aclose()


async def test_a_malformed_message_is_parked_on_the_dlq_and_the_worker_keeps_issuing(
    system: System, client: httpx.AsyncClient
) -> None:
    coupon_id = await create_coupon(client, quantity=5)
    garbage = f"not-an-event-{uuid.uuid4().hex}".encode()
    producer = Producer(producer_config(system.broker.bootstrap, message_timeout_ms=10_000))
    producer.produce("outside.coupon.publish.requested.v1", key=str(coupon_id).encode(), value=garbage)
    assert producer.flush(10) == 0

    parked = await read_all(system.broker.bootstrap, "outside.coupon.publish.requested.v1.dlq", 1, timeout=30)
    assert parked[0].value == garbage
    assert parked[0].headers["dlq-reason"] == b"MALFORMED"
    assert b"JSON" in parked[0].headers["dlq-error"]
    assert parked[0].headers["dlq-original-topic"] == b"outside.coupon.publish.requested.v1"

    response = await client.post("/api/v1/users/3001/coupons/publish", json={"couponId": coupon_id})
    assert response.status_code == 200
    await eventually(lambda: holdings(client, 3001), lambda h: len(h) == 1, timeout=30, what="issue after a poison")


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/api/v1/users/abc/coupons/publish", {"couponId": 1}, 400, "INVALID_REQUEST"),
        ("/api/v1/users/-5/coupons/publish", {"couponId": 1}, 400, "INVALID_REQUEST"),
        ("/api/v1/users/0/coupons/publish", {"couponId": 1}, 400, "INVALID_REQUEST"),
        ("/api/v1/users/1/coupons/publish", {}, 400, "INVALID_REQUEST"),
        ("/api/v1/users/1/coupons/publish", {"couponId": "1"}, 400, "INVALID_REQUEST"),
        ("/api/v1/users/1/coupons/publish", {"couponId": -1}, 400, "INVALID_REQUEST"),
        ("/api/v1/users/1/coupons/publish", {"couponId": 1.5}, 400, "INVALID_REQUEST"),
        ("/api/v1/users/1/coupons/publish", {"couponId": 2**63}, 400, "INVALID_REQUEST"),
        ("/api/v1/users/1/coupons/publish", {"couponId": 987654321}, 404, "UNKNOWN_COUPON"),
        ("/api/v1/users/99999999999999999999/coupons/publish", {"couponId": 1}, 400, "INVALID_REQUEST"),
    ],
)
async def test_bad_input_gets_a_4xx_envelope_with_a_message(
    client: httpx.AsyncClient, path: str, body: dict[str, object], status: int, reason: str
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status
    envelope = response.json()
    assert envelope["code"] == status
    assert envelope["data"]["reason"] == reason
    assert envelope["message"]


async def test_malformed_json_and_unknown_routes_are_answered_in_the_envelope(client: httpx.AsyncClient) -> None:
    broken = await client.post(
        "/api/v1/users/1/coupons/publish", content=b'{"couponId": ', headers={"content-type": "application/json"}
    )
    assert (broken.status_code, broken.json()["message"]) == (400, "malformed JSON body")
    missing = await client.get("/api/v1/nothing-here")
    assert (missing.status_code, missing.json()["code"]) == (404, 404)
    wrong_method = await client.delete("/api/v1/users/1/coupons")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, 405)
    unknown = await client.get("/api/v1/coupons/987654321")
    assert (unknown.status_code, unknown.json()["data"]["reason"]) == (404, "UNKNOWN_COUPON")


@pytest.mark.parametrize(
    ("headers", "expected_message"),
    [
        ({}, "missing admin credentials"),
        ({"Authorization": "Bearer wrong"}, "invalid admin token"),
        ({"Authorization": f"Basic {ADMIN_TOKEN}"}, "missing admin credentials"),
    ],
)
async def test_creating_a_coupon_requires_the_admin_token(
    client: httpx.AsyncClient, headers: dict[str, str], expected_message: str
) -> None:
    response = await client.post("/api/v1/coupons", json=coupon_body(5), headers=headers)
    assert response.status_code == 401
    assert expected_message in response.json()["message"]
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"discountRate": 0}, "discountRate"),
        ({"discountRate": 1.5}, "discountRate"),
        ({"quantity": 0}, "quantity"),
        ({"status": "OPEN"}, "status"),
        ({"expiredAt": "2030-01-01T00:00:00"}, "expiredAt"),
        ({"name": ""}, "name"),
    ],
)
async def test_an_impossible_coupon_is_refused_with_the_field_named(
    client: httpx.AsyncClient, change: dict[str, object], field: str
) -> None:
    response = await client.post(
        "/api/v1/coupons", json={**coupon_body(5), **change}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 400
    assert field in response.json()["message"]


async def test_a_coupon_reads_back_with_its_counts(client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, quantity=7)
    data = (await client.get(f"/api/v1/coupons/{coupon_id}")).json()["data"]
    assert data["id"] == coupon_id
    assert (data["quantity"], data["issuedCount"], data["remainingQuantity"]) == (7, 0, 7)
    assert (data["status"], data["discountRate"]) == ("PUBLISHABLE", 0.1)
    assert set(data) == {
        "id",
        "name",
        "discountRate",
        "quantity",
        "issuedCount",
        "remainingQuantity",
        "status",
        "expiredAt",
        # Additions (the operators' issue): the derived state and the counts behind it.
        "opensAt",
        "state",
        "pendingCount",
        "availableQuantity",
    }
    assert (data["state"], data["opensAt"], data["pendingCount"], data["availableQuantity"]) == ("OPEN", None, 0, 7)


async def test_closed_and_expired_coupons_are_refused_at_once_with_409(client: httpx.AsyncClient) -> None:
    closed = await create_coupon(client, quantity=5, status="UNPUBLISHABLE")
    response = await client.post("/api/v1/users/1/coupons/publish", json={"couponId": closed})
    assert (response.status_code, response.json()["data"]["reason"]) == (409, "NOT_OPEN")

    expiring = await create_coupon(client, quantity=5, expires_in=timedelta(seconds=1))

    async def ask() -> httpx.Response:
        return await client.post("/api/v1/users/1/coupons/publish", json={"couponId": expiring})

    # (the first ask may be admitted before expiry; after it, even a repeat is refused as EXPIRED)
    refused = await eventually(
        ask, lambda r: r.json()["data"].get("reason") == "EXPIRED", timeout=10, interval=0.2, what="expiry"
    )
    assert refused.status_code == 409
