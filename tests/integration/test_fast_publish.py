"""The publish fast path answers exactly as the FastAPI route does, on the real gate and database.

Two apps over the same PostgreSQL and Redis, one with the fast path and one without, are sent the
same requests; every answer must match (status, envelope, reason, headers), ids and times aside.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from couponrush.config import Settings
from couponrush.entrypoints.api.app import create_app
from couponrush.observability.metrics import PUBLISH_REQUESTS, TALLY


@pytest.fixture
async def clients(settings: Settings, db: asyncpg.Pool, redis: Redis) -> AsyncIterator[dict[bool, httpx.AsyncClient]]:
    apps = {fast: create_app(settings.model_copy(update={"http_fast_publish": fast})) for fast in (True, False)}
    async with contextlib_all(apps.values()):
        yield {
            fast: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
            for fast, app in apps.items()
        }


class contextlib_all:
    """Run every app's lifespan (open and close its services) around the test."""

    def __init__(self, apps: Any) -> None:
        self.contexts = [app.router.lifespan_context(app) for app in apps if isinstance(app, FastAPI)]

    async def __aenter__(self) -> None:
        for context in self.contexts:
            await context.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        for context in reversed(self.contexts):
            await context.__aexit__(*exc)


def comparable(response: httpx.Response, coupon_id: int) -> tuple[int, dict[str, Any], str | None, str | None]:
    """The answer with what differs between the two apps' coupons and requests taken out."""
    body = response.json()
    data = body.get("data") or {}
    if response.status_code == 200:
        assert set(data) == {"requestId", "userId", "couponId", "requestedAt"}
        assert data["couponId"] == coupon_id
        data = {k: v for k, v in data.items() if k not in ("requestId", "requestedAt", "couponId")}
    return (
        response.status_code,
        {"code": body["code"], "message": re.sub(rf"\b{coupon_id}\b", "C", body["message"]), "data": data},
        response.headers.get("content-type"),
        response.headers.get("retry-after"),
    )


async def test_every_answer_of_the_fast_path_matches_the_route(clients: dict[bool, httpx.AsyncClient]) -> None:
    admin = {"Authorization": "Bearer test-admin-token"}
    answers: dict[bool, list[tuple[int, dict[str, Any], str | None, str | None]]] = {}
    for fast, client in clients.items():
        coupon = {"name": "c", "discountRate": 0.1, "quantity": 1, "status": "PUBLISHABLE"}
        made = await client.post("/api/v1/coupons", json={**coupon, "expiredAt": "2099-01-01T00:00:00Z"}, headers=admin)
        coupon_id = made.json()["data"]["id"]
        user = 100  # each app has its own coupon, so the same users can ask for both
        sends: list[tuple[str, Any]] = [
            (f"/api/v1/users/{user}/coupons/publish", {"couponId": coupon_id}),  # 200
            (f"/api/v1/users/{user}/coupons/publish", {"couponId": coupon_id}),  # 409 ALREADY_REQUESTED
            (f"/api/v1/users/{user + 1}/coupons/publish", {"couponId": coupon_id}),  # 409 SOLD_OUT
            (f"/api/v1/users/{user}/coupons/publish", {"couponId": 987654321}),  # 404 UNKNOWN_COUPON
            (f"/api/v1/users/{user}/coupons/publish", {"couponId": True}),  # 400, through the route
            (f"/api/v1/users/{user}/coupons/publish", {"couponId": coupon_id, "x": 1}),  # 400
            (f"/api/v1/users/{user}/coupons/publish", "not json"),  # 400
            ("/api/v1/users/0/coupons/publish", {"couponId": coupon_id}),  # 400 (path)
            (f"/api/v1/users/{2**63}/coupons/publish", {"couponId": coupon_id}),  # 400 (path)
        ]
        answers[fast] = []
        for path, body in sends:
            if isinstance(body, str):
                response = await client.post(path, content=body, headers={"content-type": "application/json"})
            else:
                response = await client.post(path, json=body)
            answers[fast].append(comparable(response, coupon_id))
    assert [a[0] for a in answers[True]] == [200, 409, 409, 404, 400, 400, 400, 400, 400]
    assert answers[True] == answers[False]


async def test_the_fast_path_counts_its_answers_like_the_route(clients: dict[bool, httpx.AsyncClient]) -> None:
    accepted = PUBLISH_REQUESTS.labels("accepted", "OK")._value.get()
    client = clients[True]
    admin = {"Authorization": "Bearer test-admin-token"}
    coupon = {
        "name": "c",
        "discountRate": 0.1,
        "quantity": 5,
        "status": "PUBLISHABLE",
        "expiredAt": "2099-01-01T00:00:00Z",
    }
    coupon_id = (await client.post("/api/v1/coupons", json=coupon, headers=admin)).json()["data"]["id"]
    response = await client.post("/api/v1/users/5/coupons/publish", json={"couponId": coupon_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == response.json()["data"]["requestId"]
    TALLY.flush()  # counts are written in batches (at the latest 0.1 s later, and at every scrape)
    assert PUBLISH_REQUESTS.labels("accepted", "OK")._value.get() == accepted + 1
