"""The publish route answered natively (granian RSGI) answers exactly as the documented FastAPI route does.

Two API processes of one system: the default one (the native path), and one with
COUPONRUSH_HTTP_FAST_PUBLISH=false (every request through FastAPI). Each gets its own coupon and the same
sequence of requests; every answer must match (status, envelope, reason, headers), ids and times aside.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from couponrush.dev.broker import free_port
from couponrush_bench.harness import System, create_coupon, wait_ready


def comparable(response: httpx.Response, coupon_id: int) -> tuple[int, dict[str, Any], str | None, str | None]:
    body = response.json()
    data = body.get("data") or {}
    if response.status_code == 200:
        assert set(data) == {"requestId", "userId", "couponId", "requestedAt"}
        assert data["couponId"] == coupon_id
        assert response.headers["x-request-id"] == data["requestId"]
        data = {k: v for k, v in data.items() if k not in ("requestId", "requestedAt", "couponId")}
    return (
        response.status_code,
        {"code": body["code"], "message": re.sub(rf"\b{coupon_id}\b", "C", body["message"]), "data": data},
        response.headers.get("content-type"),
        response.headers.get("retry-after"),
    )


async def test_every_answer_of_the_native_publish_path_matches_the_fastapi_route(system: System) -> None:
    port = free_port()
    system.start(
        "api", name="api_route", env={"COUPONRUSH_HTTP_PORT": str(port), "COUPONRUSH_HTTP_FAST_PUBLISH": "false"}
    )
    route_url = f"http://127.0.0.1:{port}"
    await wait_ready(route_url)
    answers: dict[str, list[tuple[int, dict[str, Any], str | None, str | None]]] = {}
    try:
        for name, url in (("native", system.base_url), ("route", route_url)):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                coupon_id = await create_coupon(client, 1)
                user = 7100  # each API has its own coupon, so the same users can ask for both
                sends: list[tuple[str, Any]] = [
                    (f"/api/v1/users/{user}/coupons/publish", {"couponId": coupon_id}),  # 200
                    (f"/api/v1/users/{user}/coupons/publish", {"couponId": coupon_id}),  # 409 ALREADY_REQUESTED
                    (f"/api/v1/users/{user + 1}/coupons/publish", {"couponId": coupon_id}),  # 409 SOLD_OUT
                    (f"/api/v1/users/{user}/coupons/publish", {"couponId": 987654321}),  # 404 UNKNOWN_COUPON
                    (f"/api/v1/users/{user}/coupons/publish", {"couponId": True}),  # 400, through the route
                    (f"/api/v1/users/{user}/coupons/publish", {"couponId": coupon_id, "x": 1}),  # 400
                    (f"/api/v1/users/{user}/coupons/publish", "not json"),  # 400
                    (f"/api/v1/users/{user}/coupons/publish", "x" * 5000),  # 413
                    ("/api/v1/users/0/coupons/publish", {"couponId": coupon_id}),  # 400 (path)
                    ("/api/v1/users/01/coupons/publish", {"couponId": coupon_id}),  # 400 (path)
                    (f"/api/v1/users/{2**63}/coupons/publish", {"couponId": coupon_id}),  # 400 (path)
                ]
                answers[name] = []
                for path, body in sends:
                    if isinstance(body, str):
                        response = await client.post(path, content=body, headers={"content-type": "application/json"})
                    else:
                        response = await client.post(path, json=body)
                    answers[name].append(comparable(response, coupon_id))
    finally:
        assert system.stop("api_route") == 0
    assert [a[0] for a in answers["native"]] == [200, 409, 409, 404, 400, 400, 400, 413, 400, 400, 400]
    assert answers["native"] == answers["route"]
