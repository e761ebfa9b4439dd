"""The chaos suite's crowd: many users, some tapping twice, a fixed number in flight, each retrying a 503 or a
lost connection for a while (on the next API process, when there are several), as a client would.

Unlike the end-to-end tests' drop (tests/support/drop.py), it keeps a running tally the faults are timed by
(``Progress``: told OK, refused, sold out) and never raises on a request that got no answer: that is a
finding (``Answer.status`` 0), recorded with the run.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

REFUSALS = frozenset({"SOLD_OUT", "ALREADY_REQUESTED"})


@dataclass(frozen=True, slots=True)
class Answer:
    user_id: int
    status: int  # 0: no answer at all (every attempt lost its connection until the client gave up)
    reason: str | None
    request_id: str | None
    at: float  # loop time of the final answer
    attempts: int


@dataclass
class Progress:
    """The drop so far, as the clients saw it."""

    quantity: int
    answers: list[Answer] = field(default_factory=list)
    told_ok: int = 0
    refused: int = 0  # SOLD_OUT / ALREADY_REQUESTED
    # Refusals counted from the moment the coupon was seen sold out (told OK reached the quantity, or a SOLD_OUT).
    refused_since_sold_out: int | None = None
    finished: bool = False

    @property
    def sold_out(self) -> bool:
        return self.refused_since_sold_out is not None

    def add(self, answer: Answer) -> None:
        self.answers.append(answer)
        if answer.status == 200:
            self.told_ok += 1
        refusal = answer.status == 409 and answer.reason in REFUSALS
        if refusal:
            self.refused += 1
        if self.refused_since_sold_out is None:
            if self.told_ok >= self.quantity or answer.reason == "SOLD_OUT":
                self.refused_since_sold_out = 0
        elif refusal:
            self.refused_since_sold_out += 1


def crowd(users: int, requests: int, *, first_user: int, rng: random.Random) -> list[int]:
    """``requests`` user ids over ``users`` distinct users (each appears at least once), shuffled."""
    ids = [first_user + n for n in range(users)]
    picks = ids + [rng.choice(ids) for _ in range(requests - users)]
    rng.shuffle(picks)
    return picks


async def run_crowd(
    base_urls: Sequence[str],
    coupon_id: int,
    users: Sequence[int],
    progress: Progress,
    *,
    concurrency: int,
    patience_s: float = 30.0,
    on_answer: Callable[[Progress], None] = lambda _p: None,
) -> list[Answer]:
    """One request per entry of ``users``, ``concurrency`` in flight, spread over ``base_urls``.

    A 503 or a request that got no answer is retried after 0.2 s on the next base URL, for ``patience_s``
    from the first attempt; then its last answer (or 0) is final. ``on_answer`` runs after each final answer.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = [httpx.AsyncClient(base_url=url, timeout=15, limits=limits) for url in base_urls]
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()

    async def one(n: int, user_id: int) -> None:
        async with gate:
            # The client's patience starts with its first attempt, not while it queues for a connection.
            give_up = loop.time() + patience_s
            attempts = 0
            status, reason, request_id = 0, None, None
            while True:
                client = clients[(n + attempts) % len(clients)]
                attempts += 1
                try:
                    response = await client.post(
                        f"/api/v1/users/{user_id}/coupons/publish", json={"couponId": coupon_id}
                    )
                except httpx.TransportError:
                    status = 0
                else:
                    status, reason, request_id = _read(response)
                if status not in (0, 503) or loop.time() > give_up:
                    break
                await asyncio.sleep(0.2)  # the client's back-off, not the test waiting on the system
        progress.add(Answer(user_id, status, reason, request_id, loop.time(), attempts))
        on_answer(progress)

    try:
        await asyncio.gather(*(one(n, u) for n, u in enumerate(users)))
    finally:
        progress.finished = True
        for client in clients:
            await client.aclose()
    return progress.answers


def _read(response: httpx.Response) -> tuple[int, str | None, str | None]:
    """Status, ``data.reason`` and ``data.requestId``; an answer outside the envelope reads as NOT_ENVELOPE."""
    try:
        body = response.json()
        data = body["data"] or {}
        if body["code"] != response.status_code:
            return response.status_code, "NOT_ENVELOPE", None
        return response.status_code, data.get("reason"), data.get("requestId")
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.status_code, "NOT_ENVELOPE", None
