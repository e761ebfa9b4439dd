"""Hearing that requests were decided: one PostgreSQL connection per API process LISTENs on
``couponrush_decided``, which the issuer NOTIFYs in the transaction that decides requests (adapters/issuer.py),
delivered at commit with the "userId:couponId" pairs it decided.

The connection is a session of its own (LISTEN needs one; not through a transaction-pooling proxy). If
it drops, it is made again with backoff, and ``on_gap`` is called once it listens again: whatever was
decided meanwhile was not heard, so waiters read their outcome again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from couponrush.adapters.db import connect

log = logging.getLogger(__name__)

CHANNEL = "couponrush_decided"


def parse_pairs(payload: str) -> list[tuple[int, int]]:
    """``"7:1,8:1"`` -> [(7, 1), (8, 1)]; anything malformed is skipped (the database wrote it, but be safe)."""
    pairs: list[tuple[int, int]] = []
    for item in payload.split(","):
        user, _, coupon = item.partition(":")
        if user.isdigit() and coupon.isdigit():
            pairs.append((int(user), int(coupon)))
    return pairs


class PostgresDecisionListener:
    def __init__(
        self,
        database_url: str,
        on_decided: Callable[[list[tuple[int, int]]], object],
        on_gap: Callable[[], None],
        *,
        retry_s: float = 0.5,
    ) -> None:
        self._url = database_url
        self._on_decided = on_decided
        self._on_gap = on_gap
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self._on_decided(parse_pairs(str(payload)))

    def _terminated(self, _conn: object) -> None:
        self._lost.set()

    async def _run(self) -> None:
        pause, first = self._retry_s, True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._url)
                conn.add_termination_listener(self._terminated)
                await conn.add_listener(CHANNEL, self._notified)
                self._lost.clear()
                self.listening.set()
                if not first:
                    log.info("listening for decisions again; waiters read their outcome again")
                    self._on_gap()
                first, pause = False, self._retry_s
                await self._lost.wait()
                log.warning("lost the connection that listens for decisions; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot listen for decisions (%s); retrying in %.1f s", exc, pause)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # no listener cleanup needed: the session ends with it
            first = False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
