"""The transactional outbox in PostgreSQL: written inside a caller's transaction, read and settled by the relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from couponrush.adapters.db import Connection
from couponrush.service.ports import OutboundMessage, OutboxRow
from couponrush.service.signals import sleep_unless

_NOTIFY_CHANNEL = "couponrush_outbox"
# One relay at a time: Tansu (and ordering in general) wants one active producer per topic.
RELAY_LOCK = 0x72656C6179  # "relay"


async def enqueue(conn: Connection, message: OutboundMessage) -> None:
    """Add a message to the outbox within the caller's open transaction."""
    await conn.execute(
        "INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
        message.topic,
        message.key,
        message.payload,
        json.dumps(dict(message.headers)),
    )


async def enqueue_many(conn: Connection, messages: Sequence[OutboundMessage]) -> None:
    """Add messages to the outbox within the caller's open transaction: one statement, ids in list order."""
    if not messages:
        return
    await conn.execute(
        "INSERT INTO outbox (topic, key, payload, headers)"
        " SELECT m.topic, m.key, m.payload, m.headers::jsonb"
        " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) WITH ORDINALITY"
        "   AS m(topic, key, payload, headers, n)"
        " ORDER BY m.n",
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.payload for m in messages],
        [json.dumps(dict(m.headers)) for m in messages],
    )


def _row(record: asyncpg.Record) -> OutboxRow:
    headers = json.loads(str(record["headers"]))
    return OutboxRow(
        id=record["id"],
        message=OutboundMessage(
            topic=str(record["topic"]),
            key=None if record["key"] is None else str(record["key"]),
            payload=bytes(record["payload"]),
            headers={str(k): str(v) for k, v in headers.items()},
        ),
        attempts=record["attempts"],
    )


@dataclass
class PostgresOutbox:
    """The relay's view of the outbox. Holds the relay lock and listens for new rows."""

    pool: asyncpg.Pool
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    async def unsent(self, limit: int) -> list[OutboxRow]:
        records = await self.pool.fetch(
            "SELECT id, topic, key, payload, headers::text AS headers, attempts"
            " FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
            limit,
        )
        return [_row(r) for r in records]

    async def mark_sent(self, ids: Sequence[int]) -> None:
        if ids:
            await self.pool.execute(
                "UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL"
                " WHERE id = ANY($1::bigint[])",
                list(ids),
            )

    async def mark_failed(self, failures: Mapping[int, str]) -> None:
        if failures:
            await self.pool.execute(
                "UPDATE outbox AS o SET attempts = o.attempts + 1, last_error = f.error"
                " FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id",
                list(failures.keys()),
                [e[:1000] for e in failures.values()],
            )

    async def backlog(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))

    @contextlib.asynccontextmanager
    async def exclusive(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event | None]:
        """Hold the relay lock and a LISTEN for new rows for as long as the context is open.

        Waits (standing by) while another relay holds the lock. Yields an event that is set if
        the lock's connection is lost, so the caller stops relaying; yields None if ``stop``
        was set while standing by.
        """
        conn = await self.pool.acquire()
        lost = asyncio.Event()
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                if await sleep_unless(stop, 1.0):
                    yield None
                    return

            def _notified(*_: object) -> None:
                self._wakeup.set()

            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(_NOTIFY_CHANNEL, _notified)
            try:
                yield lost
            finally:
                with contextlib.suppress(Exception):
                    await conn.remove_listener(_NOTIFY_CHANNEL, _notified)
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK)
        finally:
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    async def wait_for_rows(self, timeout: float) -> None:
        """Return when a NOTIFY arrives or after ``timeout`` seconds, whichever is first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        self._wakeup.clear()
