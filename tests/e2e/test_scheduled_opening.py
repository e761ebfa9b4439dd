"""A drop announced for an instant opens at that instant by one clock: the Redis server's. Two API processes,
one of them on a host clock 5 s fast, hammered from 2 s before the opening: no 200 before it, and from
50 ms after it on, nobody is told NOT_OPEN."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from couponrush.dev.broker import free_port
from couponrush_bench.harness import ADMIN_TOKEN, System, coupon_body, wait_ready

SKEW_S = 5.0
CLIENTS_PER_API = 4
# Makes the API process believe it is SKEW_S later than it is (its clock, not Redis's).
SKEWED_CLOCK = f"""
import datetime
import couponrush.service.clock as clock

_real = clock.utcnow


def _skewed() -> datetime.datetime:
    return _real() + datetime.timedelta(seconds={SKEW_S})


clock.utcnow = _skewed
"""


@dataclass(frozen=True)
class Answer:
    api: str
    sent: float  # by the Redis clock, epoch seconds
    received: float
    status: int
    reason: str | None
    body: dict[str, object]
    retry_after: str | None


@pytest.fixture
async def skewed_api(system: System, tmp_path: Path) -> str:
    """A second API process on the same system whose host clock runs SKEW_S ahead."""
    shim = tmp_path / "skewed"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SKEWED_CLOCK)
    port = free_port()
    system.start("api", name="api-skewed", env={"COUPONRUSH_HTTP_PORT": str(port), "PYTHONPATH": str(shim)})
    url = f"http://127.0.0.1:{port}"
    await wait_ready(url)
    return url


async def test_no_api_process_opens_early_and_all_open_within_50_ms(system: System, skewed_api: str) -> None:
    redis = system.redis()
    try:
        seconds, micros = await redis.time()
        offset = seconds + micros / 1e6 - time.time()  # Redis clock - this host's clock (same host: ~0)
    finally:
        await redis.aclose()
    opens_at = datetime.fromtimestamp(time.time() + offset + 3.0, UTC)
    limits = httpx.Limits(max_connections=2 * CLIENTS_PER_API)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        created = await client.post(
            f"{system.base_url}/api/v1/coupons",
            json={**coupon_body(50_000), "opensAt": opens_at.isoformat()},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert created.status_code == 201, created.text
        coupon_id = created.json()["data"]["id"]
        opening = opens_at.timestamp()
        users = iter(range(10_000_000, 20_000_000))

        async def hammer(api: str) -> list[Answer]:
            answers: list[Answer] = []
            while (now := time.time() + offset) < opening + 1.0:
                sent = now
                response = await client.post(
                    f"{api}/api/v1/users/{next(users)}/coupons/publish", json={"couponId": coupon_id}
                )
                body = response.json()
                reason = None if response.status_code == 200 else str(body["data"]["reason"])
                answers.append(
                    Answer(
                        api,
                        sent,
                        time.time() + offset,
                        response.status_code,
                        reason,
                        body["data"],
                        response.headers.get("Retry-After"),
                    )
                )
            return answers

        start = opening - 2.0 - (time.time() + offset)
        assert start > 0, "the coupon took too long to create"
        await asyncio.sleep(start)  # the clients start 2 s before the announced instant, by the Redis clock
        apis = [system.base_url, skewed_api]
        per_client = await asyncio.gather(*(hammer(api) for api in apis for _ in range(CLIENTS_PER_API)))
    answers = sorted((a for batch in per_client for a in batch), key=lambda a: a.sent)
    system.stop("api-skewed")

    admitted = [a for a in answers if a.status == 200]
    not_open = [a for a in answers if a.reason == "NOT_OPEN"]
    assert {a.status for a in answers} <= {200, 409}, {a.status for a in answers}
    assert not_open, "nobody asked before the opening"
    assert admitted, "nobody was admitted after the opening"
    # No 200 before the instant, from either process (the skewed one would have opened 5 s early by its clock).
    early = [a for a in admitted if a.received < opening]
    assert early == [], early[:3]
    # From 50 ms after the instant on, nobody is told NOT_OPEN.
    late = [a for a in not_open if a.sent >= opening + 0.05]
    assert late == [], late[:3]
    # ...and the first admission was asked for within 50 ms of it: no host waits for a timer or a poll.
    assert admitted[0].sent < opening + 0.05, admitted[0].sent - opening
    assert {a.api for a in admitted} == set(apis)
    # Before it, each refusal said when it opens and how long to wait.
    said = {str(a.body["opensAt"]) for a in not_open}
    assert len(said) == 1
    assert abs(datetime.fromisoformat(said.pop()).timestamp() - opening) < 0.001
    assert all(a.retry_after is not None and 1 <= int(a.retry_after) <= 3 for a in not_open)
    # The skewed process really did run 5 s ahead: it stamped its acceptances so.
    skewed = [a for a in admitted if a.api == skewed_api]
    stamped = datetime.fromisoformat(str(skewed[0].body["requestedAt"])).timestamp()
    assert stamped - skewed[0].received > SKEW_S - 1
