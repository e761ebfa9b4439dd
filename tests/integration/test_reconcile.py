"""Reconciliation against real PostgreSQL and Redis: drift is found, confirmed, repaired and counted."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis

from couponrush.adapters.coupons import PostgresCoupons, PostgresGateSnapshots
from couponrush.adapters.gate import RedisReservingGate, gate_key, holders_key
from couponrush.adapters.issuer import PostgresIssuer
from couponrush.adapters.reconcile import PostgresLedger, RedisGateInspector
from couponrush.adapters.requests import PostgresRequestLog
from couponrush.service.gate_rebuild import GateRebuilder
from couponrush.service.reconcile import InMemoryRepairCounter, Reconciler
from tests.support.data import new_coupon, publish_requested
from tests.support.fakes import issue_one


async def drop_in_progress(db: asyncpg.Pool, redis: Redis) -> tuple[int, Reconciler, InMemoryRepairCounter]:
    """A coupon of 5: users 1-3 admitted and recorded, user 1 issued."""
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=5))
    gate = RedisReservingGate(redis)
    assert await gate.open(coupon, datetime.now(UTC), created=True)
    log = PostgresRequestLog(db)
    events = [publish_requested(user, coupon.id) for user in (1, 2, 3)]
    for event in events:
        await gate.admit(coupon.id, event.user_id, event.request_id, datetime.now(UTC))
        await log.record_accepted(event)
    await issue_one(PostgresIssuer(db, "published"), events[0], datetime.now(UTC))
    counter = InMemoryRepairCounter()
    snapshots = PostgresGateSnapshots(db)
    reconciler = Reconciler(
        snapshots=snapshots,
        inspector=RedisGateInspector(redis),
        ledger=PostgresLedger(db, "requests"),
        rebuilder=GateRebuilder(gate=gate, snapshots=snapshots, grace_s=0.05),
        counter=counter,
        confirm_after_s=0.05,
    )
    return coupon.id, reconciler, counter


async def test_a_consistent_gate_is_left_alone_and_the_ledger_reported(db: asyncpg.Pool, redis: Redis) -> None:
    _coupon_id, reconciler, counter = await drop_in_progress(db, redis)
    [report] = await reconciler.reconcile()
    assert report.problems == ()
    assert not report.repaired
    assert counter.total == 0
    assert report.ledger is not None
    assert (report.ledger.issued_rows, report.ledger.pending, report.ledger.unsent_outbox) == (1, 2, 3)
    assert "consistent" in report.line()


async def test_a_lost_reservation_and_a_leaked_one_are_repaired_from_the_database(
    db: asyncpg.Pool, redis: Redis
) -> None:
    coupon_id, reconciler, counter = await drop_in_progress(db, redis)
    holders = holders_key(coupon_id)
    user2 = await redis.hget(holders, "2")  # type: ignore[misc]
    await redis.hdel(holders, "2")  # type: ignore[misc]  # lost: user 2 could be sold a second unit
    await redis.hset(holders, "99", "leaked")  # type: ignore[misc]  # a unit nobody will ever use
    [report] = await reconciler.reconcile()
    assert "user 2 not reserved in Redis" in report.problems
    assert "user 99 reserved in Redis without a live request" in report.problems
    assert report.repaired
    assert counter.counts == {"gate": 1}
    after = await redis.hgetall(holders)  # type: ignore[misc]
    assert sorted(after) == [b"1", b"2", b"3"]
    assert after[b"2"] == user2
    assert await redis.hget(gate_key(coupon_id), "stock") == b"2"  # type: ignore[misc]
    [again] = await reconciler.reconcile()
    assert again.problems == ()


async def test_a_flushed_gate_is_rebuilt(db: asyncpg.Pool, redis: Redis) -> None:
    coupon_id, reconciler, counter = await drop_in_progress(db, redis)
    await redis.flushdb()
    [report] = await reconciler.reconcile()
    assert report.problems == ("gate missing in Redis",)
    assert report.repaired
    assert counter.total == 1
    assert await redis.hget(gate_key(coupon_id), "stock") == b"2"  # type: ignore[misc]


async def test_accepted_requests_undecided_with_nothing_queued_are_named_as_stuck(
    db: asyncpg.Pool, redis: Redis
) -> None:
    _, reconciler, _ = await drop_in_progress(db, redis)
    # The relay sent both pending events long ago (the broker then lost them): nothing is queued.
    await db.execute("UPDATE coupon_requests SET relayed_at = now()")
    await db.execute("UPDATE coupon_requests SET requested_at = now() - interval '5 minutes' WHERE status = 'PENDING'")
    stuck = {r["request_id"] for r in await db.fetch("SELECT request_id FROM coupon_requests WHERE status = 'PENDING'")}
    [report] = await reconciler.reconcile()
    assert report.stuck == 2
    assert report.ledger is not None
    assert set(report.ledger.stuck_ids) == stuck
    assert all(request_id in report.line() for request_id in stuck)
