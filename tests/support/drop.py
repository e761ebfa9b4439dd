"""A coupon drop as a crowd of clients: many users, some tapping more than once, at a fixed concurrency."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class Answer:
    user_id: int
    status: int
    reason: str | None
    request_id: str | None


def crowd(users: int, requests: int, *, first_user: int, seed: int = 7) -> list[int]:
    """``requests`` user ids over ``users`` distinct users (each appears at least once), shuffled."""
    ids = [first_user + n for n in range(users)]
    picks = ids + [random.Random(seed).choice(ids) for _ in range(requests - users)]
    random.Random(seed + 1).shuffle(picks)
    return picks


async def run_drop(
    base_urls: Sequence[str],
    coupon_id: int,
    users: Sequence[int],
    *,
    concurrency: int,
    midway: Callable[[], Coroutine[Any, Any, None]] | None = None,
    retry_unavailable_for_s: float = 30.0,
    midway_after: int | None = None,
) -> list[Answer]:
    """Send one request per entry of ``users``, spread over ``base_urls``; return every final answer.

    A 503 is retried after a short pause (as a client honouring Retry-After would), for at most
    ``retry_unavailable_for_s``; so is a request that got no answer at all (a connection closed under
    it), as a client would. ``midway`` runs once, when ``midway_after`` answers (default: half) are in.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = [httpx.AsyncClient(base_url=url, timeout=30, limits=limits) for url in base_urls]
    gate = asyncio.Semaphore(concurrency)
    answers: list[Answer] = []
    half = len(users) // 2 if midway_after is None else midway_after
    midway_task: asyncio.Task[None] | None = None

    async def one(n: int, user_id: int) -> None:
        nonlocal midway_task
        client = clients[n % len(clients)]
        loop = asyncio.get_running_loop()
        async with gate:
            # The client's patience starts with its first attempt, not while it queues for a connection.
            give_up = loop.time() + retry_unavailable_for_s
            while True:
                try:
                    response = await client.post(
                        f"/api/v1/users/{user_id}/coupons/publish", json={"couponId": coupon_id}
                    )
                except httpx.TransportError:
                    if loop.time() > give_up:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                if response.status_code != 503 or loop.time() > give_up:
                    break
                await asyncio.sleep(0.2)  # the client's back-off, not the test waiting on the system
        body = response.json()
        assert body["code"] == response.status_code, body
        data = body["data"] or {}
        answers.append(Answer(user_id, response.status_code, data.get("reason"), data.get("requestId")))
        if midway is not None and len(answers) == half:
            midway_task = asyncio.create_task(midway())

    try:
        await asyncio.gather(*(one(n, u) for n, u in enumerate(users)))
        if midway_task is not None:
            await midway_task
    finally:
        for client in clients:
            await client.aclose()
    return answers
