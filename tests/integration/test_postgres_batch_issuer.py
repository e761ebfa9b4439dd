"""Issuing a whole batch in one transaction, against real PostgreSQL: the same rules per request."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from couponrush.adapters.coupons import PostgresCoupons
from couponrush.adapters.issuer import PostgresIssuer
from couponrush.adapters.requests import PostgresRequestLog
from couponrush.domain.model import CouponStatus, RejectReason, RequestStatus
from couponrush.service.ports import UnprocessableEvent
from tests.support.data import new_coupon, publish_requested
from tests.support.fakes import issue_one

PUBLISHED = "outside.coupon.published.v1"


def issuer(db: asyncpg.Pool) -> PostgresIssuer:
    return PostgresIssuer(db, PUBLISHED)


async def test_a_batch_issues_first_come_first_served_and_records_every_decision(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=3))
    events = [publish_requested(user_id=u, coupon_id=coupon.id) for u in (1, 2, 2, 3, 4, 5)]
    for event in events[:3]:  # some were recorded at admission, some only arrive with the event
        await PostgresRequestLog(db).record_accepted(event)

    outcomes = await issuer(db).issue_batch(events, datetime.now(UTC))

    assert [(o.user_id, o.status, o.reason) for o in outcomes] == [
        (1, RequestStatus.ISSUED, None),
        (2, RequestStatus.ISSUED, None),
        (2, RequestStatus.REJECTED, RejectReason.ALREADY_ISSUED),
        (3, RequestStatus.ISSUED, None),
        (4, RequestStatus.REJECTED, RejectReason.SOLD_OUT),
        (5, RequestStatus.REJECTED, RejectReason.SOLD_OUT),
    ]
    assert all(o.coupon is not None and o.coupon.issued_count == 3 for o in outcomes)
    assert await db.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon.id) == 3
    holders = await db.fetch("SELECT user_id, request_id FROM user_coupons ORDER BY user_id")
    assert [(h["user_id"], h["request_id"]) for h in holders] == [
        (1, events[0].request_id),
        (2, events[1].request_id),
        (3, events[3].request_id),
    ]
    statuses = await db.fetch("SELECT request_id, status, reason FROM coupon_requests")
    assert {r["request_id"]: (r["status"], r["reason"]) for r in statuses} == {
        events[0].request_id: ("ISSUED", None),
        events[1].request_id: ("ISSUED", None),
        events[2].request_id: ("REJECTED", "ALREADY_ISSUED"),
        events[3].request_id: ("ISSUED", None),
        events[4].request_id: ("REJECTED", "SOLD_OUT"),
        events[5].request_id: ("REJECTED", "SOLD_OUT"),
    }
    published = await db.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", PUBLISHED)
    bodies = [json.loads(p["payload"]) for p in published]
    assert [(b["userId"], b["issuedCount"]) for b in bodies] == [(1, 1), (2, 2), (3, 3)]


async def test_a_redelivered_batch_changes_nothing_and_reports_the_same_outcomes(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=2))
    events = [publish_requested(user_id=u, coupon_id=coupon.id) for u in (1, 2, 3)]
    first = await issuer(db).issue_batch(events, datetime.now(UTC))
    # The same records again, one of them twice (a redelivery overlapping a retry).
    second = await issuer(db).issue_batch([*events, events[0]], datetime.now(UTC))

    assert [(o.status, o.reason, o.replayed) for o in first] == [
        (RequestStatus.ISSUED, None, False),
        (RequestStatus.ISSUED, None, False),
        (RequestStatus.REJECTED, RejectReason.SOLD_OUT, False),
    ]
    assert [(o.status, o.reason, o.replayed) for o in second] == [
        (RequestStatus.ISSUED, None, True),
        (RequestStatus.ISSUED, None, True),
        (RequestStatus.REJECTED, RejectReason.SOLD_OUT, True),
        (RequestStatus.ISSUED, None, True),
    ]
    assert await db.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon.id) == 2
    assert await db.fetchval("SELECT count(*) FROM user_coupons") == 2
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE topic = $1", PUBLISHED) == 2


async def test_one_batch_spans_coupons_and_refuses_each_closed_one_with_its_reason(db: asyncpg.Pool) -> None:
    coupons = PostgresCoupons(db)
    open_ = await coupons.create(new_coupon(quantity=5))
    closed = await coupons.create(new_coupon(status=CouponStatus.UNPUBLISHABLE))
    expired = await coupons.create(new_coupon(expires_in=timedelta(seconds=-1)))
    events = [
        publish_requested(1, open_.id),
        publish_requested(1, closed.id),
        publish_requested(1, expired.id),
        publish_requested(1, 987654),
        publish_requested(2, open_.id),
    ]
    outcomes = await issuer(db).issue_batch(events, datetime.now(UTC))
    assert [o.reason for o in outcomes] == [
        None,
        RejectReason.NOT_OPEN,
        RejectReason.EXPIRED,
        RejectReason.UNKNOWN_COUPON,
        None,
    ]
    assert await db.fetchval("SELECT issued_count FROM coupons WHERE id = $1", open_.id) == 2


async def test_a_batch_sees_holdings_from_before_it(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=5))
    await issue_one(issuer(db), publish_requested(7, coupon.id), datetime.now(UTC))
    [outcome] = await issuer(db).issue_batch([publish_requested(7, coupon.id)], datetime.now(UTC))
    assert outcome.reason is RejectReason.ALREADY_ISSUED
    assert await db.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon.id) == 1


async def test_concurrent_batches_of_one_coupon_never_exceed_its_quantity(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=25))
    events = [publish_requested(user_id=u % 60 + 1, coupon_id=coupon.id) for u in range(200)]
    batches = [events[i : i + 20] for i in range(0, len(events), 20)]
    results = await asyncio.gather(*(issuer(db).issue_batch(b, datetime.now(UTC)) for b in batches))

    issued = [o for outcomes in results for o in outcomes if o.status is RequestStatus.ISSUED]
    assert len(issued) == 25
    assert len({o.user_id for o in issued}) == 25
    assert await db.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon.id) == 25
    assert await db.fetchval("SELECT count(*) FROM user_coupons WHERE coupon_id = $1", coupon.id) == 25


async def test_a_batch_with_data_the_database_refuses_names_the_event_that_cannot_be_stored(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=5))
    good = publish_requested(1, coupon.id)
    # A NUL character is valid JSON but PostgreSQL text refuses it: only the per-event retry finds who.
    bad = msgspec.structs.replace(publish_requested(2, coupon.id), request_id="bad\x00id")
    with pytest.raises(UnprocessableEvent):
        await issuer(db).issue_batch([good, bad], datetime.now(UTC))
    # The good event was issued on the way (singly); a redelivery of it is a replay.
    [again] = await issuer(db).issue_batch([good], datetime.now(UTC))
    assert (again.status, again.replayed) == (RequestStatus.ISSUED, True)
