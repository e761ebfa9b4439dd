"""The outbox and accepted requests against real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import asyncpg
import msgspec
import pytest

from couponrush.adapters import outbox as outbox_module
from couponrush.adapters.db import available_migrations, migrate, pending_migrations
from couponrush.adapters.outbox import PostgresOutbox
from couponrush.adapters.requests import PostgresRequestLog
from couponrush.domain.events import PublishRequested
from couponrush.service.ports import NotRecorded, OutboundMessage
from tests.support.data import publish_requested


async def test_an_accepted_request_is_recorded_with_its_outbox_event(db: asyncpg.Pool) -> None:
    event = publish_requested(user_id=7, coupon_id=3)
    await PostgresRequestLog(db).record_accepted(event)

    request = await db.fetchrow("SELECT user_id, coupon_id, status FROM coupon_requests")
    assert request is not None
    assert tuple(request) == (7, 3, "PENDING")
    rows = await PostgresOutbox(db, "requests.v1").unsent(10)  # the request row is its event's outbox entry
    assert len(rows) == 1
    message = rows[0].message
    assert (message.topic, message.key) == ("requests.v1", "3")
    assert message.headers["request-id"] == event.request_id
    assert PublishRequested.from_json(message.payload) == event


async def test_recording_a_request_again_is_idempotent_and_a_fenced_one_is_refused(db: asyncpg.Pool) -> None:
    event = publish_requested(user_id=7, coupon_id=3)
    log = PostgresRequestLog(db)
    await log.record_accepted(event)
    await log.record_accepted(event)  # e.g. asked again after a timeout left it unknown: still one request
    assert await db.fetchval("SELECT count(*) FROM coupon_requests") == 1
    assert len(await PostgresOutbox(db).unsent(10)) == 1  # and one event to send
    lost = publish_requested(user_id=8, coupon_id=3)
    assert await log.fence_unrecorded(3, [(8, lost.request_id)], lost.requested_at) == {lost.request_id}
    with pytest.raises(NotRecorded) as refused:
        await log.record_accepted(lost)  # its API was too late: the sweep fenced it meanwhile
    assert "fenced" in str(refused.value)
    assert [r.message.headers["request-id"] for r in await PostgresOutbox(db).unsent(10)] == [event.request_id]


async def test_rows_are_marked_sent_or_failed_and_only_unsent_ones_come_back(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn, conn.transaction():
        for key in "abc":
            await outbox_module.enqueue(conn, OutboundMessage("t", key, key.encode(), {"h": key}))
    box = PostgresOutbox(db)
    rows = await box.unsent(10)
    assert [r.message.key for r in rows] == ["a", "b", "c"]
    await box.mark_sent([rows[0].id, rows[2].id])
    await box.mark_failed({rows[1].id: "broker unavailable"})
    again = await box.unsent(10)
    assert [(r.message.key, r.attempts) for r in again] == [("b", 1)]
    assert await db.fetchval("SELECT last_error FROM outbox WHERE id = $1", rows[1].id) == "broker unavailable"
    assert await box.backlog() == 1
    assert json.loads(await db.fetchval("SELECT headers::text FROM outbox WHERE id = $1", rows[0].id)) == {"h": "a"}


async def test_a_committed_row_wakes_the_relay_at_once(db: asyncpg.Pool) -> None:
    box = PostgresOutbox(db)
    async with box.exclusive(asyncio.Event()) as lost:
        assert lost is not None
        started = time.monotonic()
        waiter = asyncio.create_task(box.wait_for_rows(timeout=10))
        await asyncio.sleep(0.05)
        async with db.acquire() as conn, conn.transaction():
            await outbox_module.enqueue(conn, OutboundMessage("t", "k", b"v"))
        await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - started < 5  # woken by NOTIFY, not by the 10 s timeout


async def test_only_one_relay_holds_the_lock_the_other_stands_by(db: asyncpg.Pool) -> None:
    first, second = PostgresOutbox(db), PostgresOutbox(db)
    give_up = asyncio.Event()
    async with first.exclusive(asyncio.Event()) as lost:
        assert lost is not None
        standby = asyncio.create_task(_enter(second, give_up))
        await asyncio.sleep(1.5)
        assert not standby.done()
        give_up.set()
        assert await asyncio.wait_for(standby, 5) is False


async def _enter(box: PostgresOutbox, stop: asyncio.Event) -> bool:
    async with box.exclusive(stop) as lost:
        return lost is not None


async def test_migrations_are_applied_once_and_the_schema_is_current(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await migrate(conn) == []
        assert await pending_migrations(conn) == []
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [m.version for m in available_migrations()]


async def test_a_request_pending_too_long_is_published_again_once(db: asyncpg.Pool) -> None:
    log = PostgresRequestLog(db)
    stuck = publish_requested(user_id=7, coupon_id=3)
    stuck = msgspec.structs.replace(stuck, requested_at=stuck.requested_at - timedelta(seconds=60))
    fresh = publish_requested(user_id=8, coupon_id=3)
    await log.record_accepted(stuck)
    await log.record_accepted(fresh)
    box = PostgresOutbox(db)
    await box.mark_sent([row.id for row in await box.unsent(10)])  # the broker acknowledged both...

    assert await log.redrive_stuck(older_than_s=30, limit=100) == 1  # ...and then lost the old one
    [again] = await box.unsent(10)
    assert again.message.headers["request-id"] == stuck.request_id
    assert again.message.headers["redrive"] == "1"
    assert PublishRequested.from_json(again.message.payload) == stuck
    assert await log.redrive_stuck(older_than_s=30, limit=100) == 0  # not again while it is queued or recent


async def test_decided_requests_and_queued_events_are_never_re_driven(db: asyncpg.Pool) -> None:
    log = PostgresRequestLog(db)
    old = publish_requested(user_id=7, coupon_id=3)
    queued = msgspec.structs.replace(old, requested_at=old.requested_at - timedelta(seconds=60))
    await log.record_accepted(queued)  # its event is still unsent: the relay will send it
    decided = publish_requested(user_id=8, coupon_id=3)
    await log.record_accepted(msgspec.structs.replace(decided, requested_at=queued.requested_at))
    await db.execute("UPDATE coupon_requests SET status = 'ISSUED' WHERE user_id = 8")
    await db.execute("UPDATE coupon_requests SET relayed_at = now() WHERE request_id <> $1", queued.request_id)
    assert await log.redrive_stuck(older_than_s=30, limit=100) == 0
