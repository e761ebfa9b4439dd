"""Operators' listings in PostgreSQL: the state the SQL derives is the domain's, pages never repeat or skip,
every change is recorded with the change itself, and a decided request wakes its waiters (NOTIFY)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from datetime import UTC, datetime, timedelta

import asyncpg

from couponrush.adapters.coupons import PostgresCoupons
from couponrush.adapters.issuer import PostgresIssuer
from couponrush.adapters.listings import PostgresListings, PostgresLiveReader
from couponrush.adapters.outcome_reads import BatchedRequestStatus
from couponrush.adapters.requests import PostgresRequestStatus
from couponrush.domain.events import PublishRequested
from couponrush.domain.model import CouponState, CouponStatus, RequestStatus
from tests.support.data import new_coupon

NOW = datetime.now(UTC)


async def add_request(db: asyncpg.Pool, coupon_id: int, user_id: int, status: str = "PENDING") -> str:
    request_id = f"r-{coupon_id}-{user_id}"
    await db.execute(
        "INSERT INTO coupon_requests (request_id, user_id, coupon_id, requested_at, status, reason)"
        " VALUES ($1, $2, $3, now(), $4, $5)",
        request_id,
        user_id,
        coupon_id,
        status,
        "SOLD_OUT" if status == "REJECTED" else None,
    )
    return request_id


async def test_the_state_the_database_derives_is_the_domains(db: asyncpg.Pool) -> None:
    coupons, listings = PostgresCoupons(db), PostgresListings(db)
    made = []
    for status, opens_in, expires_in, quantity, pending in itertools.product(
        (CouponStatus.PUBLISHABLE, CouponStatus.UNPUBLISHABLE),
        (None, timedelta(minutes=-1), timedelta(minutes=1)),
        (timedelta(seconds=-1), timedelta(hours=1)),
        (1, 2),
        (0, 1),
    ):
        expiry = NOW + expires_in
        opens_at = None if opens_in is None else min(NOW + opens_in, expiry - timedelta(seconds=1))
        coupon = await coupons.create(
            dataclasses.replace(new_coupon(quantity=quantity, status=status), expired_at=expiry, opens_at=opens_at)
        )
        for user in range(pending):
            await add_request(db, coupon.id, user + 1)
        made.append(coupon.id)
    summaries = await listings.summaries([], None, 1000, NOW)
    assert sorted(s.coupon.id for s in summaries) == sorted(made)
    assert {s.state for s in summaries} == set(CouponState)
    for s in summaries:
        assert s.state is s.coupon.state(NOW, s.pending), s
    for state in CouponState:
        only = await listings.summaries([state], None, 1000, NOW)
        assert [s.coupon.id for s in only] == [s.coupon.id for s in summaries if s.state is state]


async def test_pages_follow_each_other_without_repeating_or_skipping(db: asyncpg.Pool) -> None:
    coupons, listings = PostgresCoupons(db), PostgresListings(db)
    coupon = await coupons.create(new_coupon(quantity=50))
    for user in range(1, 8):
        await add_request(db, coupon.id, user, "REJECTED" if user % 3 == 0 else "PENDING")
    seen: list[str] = []
    after = None
    while page := await listings.requests(coupon.id, after, 3):
        seen += [r.request_id for r in page]
        after = (page[-1].requested_at, page[-1].request_id)
    assert sorted(seen) == sorted(f"r-{coupon.id}-{u}" for u in range(1, 8))
    assert len(seen) == len(set(seen))
    rejected = await listings.requests(coupon.id, None, 10, [RequestStatus.REJECTED])
    assert [r.user_id for r in rejected] == [3, 6]
    await db.execute(
        "INSERT INTO user_coupons (user_id, coupon_id, request_id, issued_at)"
        " SELECT u, $1, 'r' || u, $2::timestamptz FROM generate_series(1, 5) u",
        coupon.id,
        NOW,
    )  # one instant for all: the id breaks the tie
    first = await listings.holders(coupon.id, None, 2)
    rest = await listings.holders(coupon.id, (first[-1].issued_at, first[-1].row_id), 10)
    assert [h.user_id for h in first + rest] == [1, 2, 3, 4, 5]


async def test_every_change_is_recorded_with_who_when_before_and_after(db: asyncpg.Pool) -> None:
    coupons, listings = PostgresCoupons(db), PostgresListings(db)
    coupon = await coupons.create(new_coupon(quantity=5), actor="cli:kim@ops")
    await coupons.set_status(coupon.id, CouponStatus.UNPUBLISHABLE, actor="api:lee")
    async with coupons.changing(coupon.id) as change:
        assert change is not None
        assert change.pending == 0
        saved = await change.save(dataclasses.replace(change.coupon, quantity=9), actor="api:lee", action="UPDATE")
    assert saved.quantity == 9
    records = await listings.changes(coupon.id, None, 10)
    assert [(r.actor, r.action) for r in records] == [
        ("cli:kim@ops", "CREATE"),
        ("api:lee", "CLOSE"),
        ("api:lee", "UPDATE"),
    ]
    assert records[0].before is None
    assert records[1].before is not None
    assert (records[1].before["status"], records[1].after["status"]) == ("PUBLISHABLE", "UNPUBLISHABLE")
    assert records[2].before is not None
    assert (records[2].before["quantity"], records[2].after["quantity"]) == (5, 9)
    assert [r.id for r in await listings.changes(coupon.id, records[0].id, 10)] == [r.id for r in records[1:]]
    async with coupons.changing(10**9) as missing:
        assert missing is None


async def test_changes_of_one_coupon_wait_for_each_other(db: asyncpg.Pool) -> None:
    coupons = PostgresCoupons(db)
    coupon = await coupons.create(new_coupon(quantity=5))
    order: list[str] = []

    async def change(name: str, hold: asyncio.Event | None, entered: asyncio.Event | None) -> None:
        async with coupons.changing(coupon.id) as ch:
            assert ch is not None
            order.append(f"{name} in")
            if entered is not None:
                entered.set()
            if hold is not None:
                await hold.wait()
            order.append(f"{name} out")

    hold, entered = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(change("first", hold, entered))
    await entered.wait()
    second = asyncio.create_task(change("second", None, None))
    await asyncio.sleep(0.2)  # the second is blocked on the lock, not on anything it could poll
    assert order == ["first in"]
    hold.set()
    await asyncio.gather(first, second)
    assert order == ["first in", "first out", "second in", "second out"]


async def test_deciding_requests_notifies_their_user_and_coupon_pairs_at_commit(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=500))
    ids = [await add_request(db, coupon.id, user) for user in range(1, 451)]
    heard: list[str] = []
    all_heard = asyncio.Event()

    def listen(*args: object) -> None:
        heard.append(str(args[3]))
        if sum(len(h.split(",")) for h in heard) >= 450:
            all_heard.set()

    async with db.acquire() as conn:
        await conn.add_listener("couponrush_decided", listen)
        try:
            await db.execute("UPDATE coupon_requests SET redrives = redrives + 1")  # not a decision: nothing said
            events = [
                PublishRequested(request_id=r, user_id=u, coupon_id=coupon.id, requested_at=datetime.now(UTC))
                for r, u in zip(ids, range(1, 451), strict=True)
            ]
            await PostgresIssuer(db, "published").issue_batch(events, datetime.now(UTC))
            await asyncio.wait_for(all_heard.wait(), 5)
        finally:
            await conn.remove_listener("couponrush_decided", listen)
    pairs = [p for h in heard for p in h.split(",")]
    assert len(pairs) == len(set(pairs)) == 450, f"{len(pairs)} pairs heard, {len(set(pairs))} distinct"
    assert set(pairs) == {f"{u}:{coupon.id}" for u in range(1, 451)}
    assert len(heard) == 3  # at most 200 pairs per notification


async def test_reads_of_one_tick_are_one_statement_with_the_same_answers_as_one_by_one(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=50))
    for user in range(1, 6):
        await add_request(db, coupon.id, user, "REJECTED" if user == 3 else "PENDING")
    single, batched = PostgresRequestStatus(db), BatchedRequestStatus(db, max_batch=4)
    keys = [(user, coupon.id) for user in range(1, 8)]  # users 6 and 7 have no request
    together = await asyncio.gather(*(batched.latest(*key) for key in keys), batched.latest(1, coupon.id))
    assert list(together[:-1]) == [await single.latest(*key) for key in keys]
    assert together[-1] == together[0]  # the same key twice in one tick: both answered
    assert together[5] is None


async def test_the_live_view_reads_live_coupons_their_counts_per_second_and_their_outbox(db: asyncpg.Pool) -> None:
    coupons = PostgresCoupons(db)
    ended = await coupons.create(dataclasses.replace(new_coupon(), expired_at=NOW - timedelta(minutes=10)))
    just_ended = await coupons.create(dataclasses.replace(new_coupon(), expired_at=NOW - timedelta(minutes=1)))
    live = await coupons.create(new_coupon(quantity=5))
    reader = PostgresLiveReader(db, "requests-topic")
    shown = await reader.live_coupons(NOW, ended_within_s=300, limit=10)
    assert [s.coupon.id for s in shown] == [live.id, just_ended.id]  # newest first; long ended ones left out
    assert ended.id not in [s.coupon.id for s in shown]

    for user in (1, 2, 3):
        await add_request(db, live.id, user)
    await db.execute(
        "INSERT INTO user_coupons (user_id, coupon_id, request_id, issued_at) VALUES (9, $1, 'r9', $2)", live.id, NOW
    )
    await db.execute(
        "INSERT INTO outbox (topic, key, payload) VALUES ('requests-topic', $1, ''), ('other-topic', $1, '')",
        str(live.id),
    )
    accepted, issued = await reader.per_second([live.id], NOW - timedelta(minutes=1))
    assert sum(accepted[live.id].values()) == 3
    assert issued[live.id] == {int(NOW.timestamp()): 1}
    # The three requests wait for the relay (each row is its own event's outbox entry), and one outbox row of
    # the request topic (a replay); the other topic's row is not counted.
    assert await reader.unsent([live.id, just_ended.id]) == {live.id: 4}
    assert await reader.per_second([], NOW) == ({}, {})
