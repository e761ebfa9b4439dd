"""The transactional outbox in PostgreSQL, read and settled by the relay.

Two tables feed it: ``coupon_requests`` rows not yet relayed (an accepted request's row is the outbox of
its own event, recorded in one statement) and ``outbox`` rows (everything else, written inside the
transaction of the fact they announce: published events, dead-letter replays).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import orjson

from couponrush.adapters.db import Connection
from couponrush.config import PUBLISH_REQUESTED_TOPIC
from couponrush.service.ports import OutboundMessage, OutboxRow
from couponrush.service.signals import sleep_unless

_NOTIFY_CHANNEL = "couponrush_outbox"
PUBLISH_REQUESTED = "CouponPublishRequested"
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


def _timestamp(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def request_message(topic: str, record: asyncpg.Record) -> OutboundMessage:
    """A recorded request's event, as ``PublishRequested.to_json`` writes it (built here without a struct:
    the relay sends thousands a second). Key = coupon id: a coupon's requests share a partition, in order."""
    coupon_id = record["coupon_id"]
    payload = orjson.dumps(
        {
            "type": PUBLISH_REQUESTED,
            "version": 1,
            "requestId": record["request_id"],
            "userId": record["user_id"],
            "couponId": coupon_id,
            "requestedAt": _timestamp(record["requested_at"]),
        }
    )
    headers = {"request-id": record["request_id"], "event-type": PUBLISH_REQUESTED}
    if record["traceparent"]:
        headers["traceparent"] = record["traceparent"]
    if record["redrives"]:
        headers["redrive"] = str(record["redrives"])
    return OutboundMessage(topic=topic, key=str(coupon_id), payload=payload, headers=headers)


@dataclass
class PostgresOutbox:
    """The relay's view of the outbox. Holds the relay lock and listens for new rows.

    Rows of ``outbox`` have integer ids; recorded requests are named by their request id (a str).
    """

    pool: asyncpg.Pool
    # The topic recorded requests go to (the relay's router maps it to the active topic version).
    requests_topic: str = PUBLISH_REQUESTED_TOPIC
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    async def unsent(self, limit: int) -> list[OutboxRow]:
        records = await self.pool.fetch(
            "(SELECT 0 AS kind, NULL::bigint AS id, request_id, user_id, coupon_id, requested_at, traceparent,"
            "   redrives, NULL::text AS topic, NULL::text AS key, NULL::bytea AS payload, NULL::text AS headers,"
            "   0 AS attempts"
            " FROM coupon_requests WHERE relayed_at IS NULL ORDER BY requested_at LIMIT $1)"
            " UNION ALL"
            " (SELECT 1, id, NULL, NULL, NULL, NULL, NULL, NULL, topic, key, payload, headers::text, attempts"
            " FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1)",
            limit,
        )
        rows: list[OutboxRow] = []
        for r in records:
            if r["kind"] == 0:
                rows.append(OutboxRow(r["request_id"], request_message(self.requests_topic, r), 0))
            else:
                rows.append(_row(r))
        return rows

    async def mark_sent(self, ids: Sequence[int | str]) -> None:
        requests = [i for i in ids if isinstance(i, str)]
        rows = [i for i in ids if isinstance(i, int)]
        if requests:
            await self.pool.execute(
                "UPDATE coupon_requests SET relayed_at = now() WHERE request_id = ANY($1::text[])", requests
            )
        if rows:
            await self.pool.execute(
                "UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL"
                " WHERE id = ANY($1::bigint[])",
                rows,
            )

    async def mark_failed(self, failures: Mapping[int | str, str]) -> None:
        # A recorded request that failed simply stays unrelayed (it is sent again on the next pass).
        rows = {i: e for i, e in failures.items() if isinstance(i, int)}
        if rows:
            await self.pool.execute(
                "UPDATE outbox AS o SET attempts = o.attempts + 1, last_error = f.error"
                " FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE o.id = f.id",
                list(rows.keys()),
                [e[:1000] for e in rows.values()],
            )

    async def backlog(self) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL)"
                " + (SELECT count(*) FROM coupon_requests WHERE relayed_at IS NULL)"
            )
        )

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
