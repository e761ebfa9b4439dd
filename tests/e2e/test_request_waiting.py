"""Answers without polling, on the running system: a long poll and a Server-Sent Events stream both answer the
moment the worker's decision commits (woken by PostgreSQL's NOTIFY, not by asking again)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from couponrush_bench.harness import System, create_coupon
from couponrush_bench.polling import eventually
from tests.e2e.test_bad_input import assert_envelope


@pytest.fixture
async def client(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as http:
        yield http


async def waiting(client: httpx.AsyncClient) -> dict[str, float]:
    """couponrush_waiting_clients by kind, as /metrics says."""
    found: dict[str, float] = {}
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("couponrush_waiting_clients{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            found[kind] = float(line.rsplit(" ", 1)[1])
    return found


async def stream_events(client: httpx.AsyncClient, path: str) -> list[tuple[str, dict[str, object], float]]:
    """Every ``status`` event of the stream until it ends: (event, data, arrival time)."""
    events: list[tuple[str, dict[str, object], float]] = []
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: ")), time.time()))
    return events


async def test_a_long_poll_and_a_stream_answer_when_the_decision_commits(
    system: System, client: httpx.AsyncClient
) -> None:
    coupon_id = await create_coupon(client, quantity=3)
    assigned = system.worker_assignments()
    system.stop("worker")  # nothing is decided while it is away
    try:
        accepted = await client.post("/api/v1/users/61/coupons/publish", json={"couponId": coupon_id})
        assert accepted.status_code == 200
        path = f"/api/v1/users/61/coupons/{coupon_id}/request"
        started = time.monotonic()
        short = await client.get(path, params={"wait": 0.3})  # nothing decides it: answered PENDING after 0.3 s
        assert (short.status_code, short.json()["data"]["status"]) == (200, "PENDING")
        assert time.monotonic() - started >= 0.3

        long_poll = asyncio.create_task(client.get(path, params={"wait": 30}))
        stream = asyncio.create_task(stream_events(client, f"{path}/events"))
        await eventually(
            lambda: waiting(client),
            lambda w: w.get("long_poll", 0) >= 1 and w.get("stream", 0) >= 1,
            timeout=10,
            what="both clients waiting",
        )
    finally:
        system.start("worker")
    await system.wait_worker_assigned(times=assigned + 1)
    answered = await asyncio.wait_for(long_poll, 40)
    answered_at = time.time()
    events = await asyncio.wait_for(stream, 40)

    data = answered.json()["data"]
    assert data["status"] == "ISSUED"
    decided_at = datetime.fromisoformat(data["decidedAt"]).timestamp()
    assert answered_at - decided_at < 1.0  # the commit's NOTIFY woke it (not a poll, not the 30 s bound)
    assert [(name, e["status"]) for name, e, _ in events] == [("status", "PENDING"), ("status", "ISSUED")]
    assert events[-1][2] - decided_at < 1.0
    assert await waiting(client) == {"long_poll": 0.0, "stream": 0.0}


async def test_waiting_for_nothing_is_a_404_and_bad_waits_a_400(client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, quantity=1)
    path = f"/api/v1/users/62/coupons/{coupon_id}/request"
    assert_envelope(await client.get(path, params={"wait": 5}), 404, "NO_REQUEST")
    assert_envelope(await client.get(f"{path}/events"), 404, "NO_REQUEST")
    for wait in ("31", "-1", "soon"):
        bad = await client.get(path, params={"wait": wait})
        assert_envelope(bad, 400, "INVALID_REQUEST")
        assert "wait" in bad.json()["message"]


async def test_a_decided_request_streams_its_outcome_and_ends(client: httpx.AsyncClient, system: System) -> None:
    coupon_id = await create_coupon(client, quantity=1)
    await client.post("/api/v1/users/63/coupons/publish", json={"couponId": coupon_id})
    path = f"/api/v1/users/63/coupons/{coupon_id}/request"
    decided = await client.get(path, params={"wait": 30})
    assert decided.json()["data"]["status"] == "ISSUED"
    events = await asyncio.wait_for(stream_events(client, f"{path}/events"), 10)
    assert [e["status"] for _, e, _ in events] == ["ISSUED"]
