"""Admission on the real gate and database: a request that cannot be recorded gives its unit back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from couponrush.adapters.coupons import PostgresCoupons
from couponrush.adapters.gate import RedisReservingGate, gate_key, holders_key
from couponrush.adapters.requests import GroupCommitRequestLog, PostgresRequestLog
from couponrush.service.admission import Admission, Unavailable
from couponrush.service.coupon_admin import CouponAdmin
from couponrush.service.ports import NotRecorded, RequestLog
from tests.support.data import new_coupon, publish_requested


@pytest.fixture
async def recording_refused(db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """Recording a request fails, as a full disk or a broken constraint would make it."""
    await db.execute(
        "CREATE FUNCTION refuse_requests() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'request insert forced to fail'; END $$;"
        " CREATE TRIGGER refuse_requests BEFORE INSERT ON coupon_requests"
        " FOR EACH ROW EXECUTE FUNCTION refuse_requests();"
    )
    try:
        yield db
    finally:
        await db.execute(
            "DROP TRIGGER IF EXISTS refuse_requests ON coupon_requests; DROP FUNCTION IF EXISTS refuse_requests();"
        )


def recorder(kind: str, db: asyncpg.Pool) -> RequestLog:
    log = PostgresRequestLog(db)
    return log if kind == "single" else GroupCommitRequestLog(log)


@pytest.mark.parametrize("kind", ["single", "group-commit"])
async def test_a_failed_recording_gives_the_reservation_back_and_records_nothing(
    recording_refused: asyncpg.Pool, redis: Redis, kind: str
) -> None:
    db = recording_refused
    gate = RedisReservingGate(redis)
    coupon = await CouponAdmin(coupons=PostgresCoupons(db), gate=gate).create(new_coupon(quantity=1))
    requests = recorder(kind, db)
    admission = Admission(gate=gate, coupons=PostgresCoupons(db), requests=requests)
    try:
        await refused_then_recorded(admission, db, redis, coupon.id)
    finally:
        if isinstance(requests, GroupCommitRequestLog):
            await requests.close()  # gives its connection back to the pool


async def refused_then_recorded(admission: Admission, db: asyncpg.Pool, redis: Redis, coupon_id: int) -> None:
    with pytest.raises(Unavailable):
        await admission.request(user_id=7, coupon_id=coupon_id)

    assert await redis.hlen(holders_key(coupon_id)) == 0  # type: ignore[misc]
    assert await redis.hget(gate_key(coupon_id), "stock") == b"1"  # type: ignore[misc]
    assert await redis.get(f"coupon:available:{coupon_id}") == b"true"
    assert await db.fetchval("SELECT count(*) FROM coupon_requests") == 0

    await db.execute("DROP TRIGGER refuse_requests ON coupon_requests")
    event = await admission.request(user_id=7, coupon_id=coupon_id)  # the same user, once it works again
    assert await redis.hget(holders_key(coupon_id), "7") == event.request_id.encode()  # type: ignore[misc]
    assert await redis.get(f"coupon:available:{coupon_id}") == b"false"


async def test_concurrent_requests_share_transactions_and_each_is_recorded_with_its_event(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=1000))
    log = GroupCommitRequestLog(PostgresRequestLog(db), flushers=2)
    events = [publish_requested(user_id=u, coupon_id=coupon.id) for u in range(1, 401)]
    await asyncio.gather(*(log.record_accepted(e) for e in events))
    await log.close()

    assert log.committer.items == 400
    assert log.committer.batches < 400 / 4  # shared transactions, not one each
    rows = await db.fetch("SELECT request_id FROM coupon_requests WHERE status = 'PENDING'")
    assert {r["request_id"] for r in rows} == {e.request_id for e in events}
    # Each row is its own event's outbox entry: all 400 wait for the relay; no second insert went anywhere.
    unrelayed = await db.fetchval("SELECT count(*) FROM coupon_requests WHERE relayed_at IS NULL")
    assert unrelayed == 400
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_fenced_request_can_no_longer_be_recorded_and_a_recorded_one_is_not_fenced(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=5))
    log = PostgresRequestLog(db)
    recorded, lost = publish_requested(7, coupon.id), publish_requested(8, coupon.id)
    await log.record_accepted(recorded)
    fenced = await log.fence_unrecorded(coupon.id, [(7, recorded.request_id), (8, lost.request_id)], lost.requested_at)
    assert fenced == {lost.request_id}
    group = GroupCommitRequestLog(log)
    late, other = publish_requested(8, coupon.id, request_id=lost.request_id), publish_requested(9, coupon.id)
    outcomes = await asyncio.gather(group.record_accepted(late), group.record_accepted(other), return_exceptions=True)
    await group.close()
    assert isinstance(outcomes[0], NotRecorded)  # its API was too late: it was fenced meanwhile
    assert outcomes[1] is None  # a batch mate is recorded as usual
    rows = await db.fetch("SELECT request_id, status, reason FROM coupon_requests ORDER BY user_id")
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("PENDING", None),
        ("REJECTED", "NOT_RECORDED"),
        ("PENDING", None),
    ]
    # What the relay will send: the two recorded requests; the fenced one never (it is marked relayed).
    queued = await db.fetch("SELECT request_id FROM coupon_requests WHERE relayed_at IS NULL")
    assert {q["request_id"] for q in queued} == {recorded.request_id, other.request_id}
