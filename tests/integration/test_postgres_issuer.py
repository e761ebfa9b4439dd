"""The issuing transaction against real PostgreSQL: every rule, redelivery, and concurrency."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from couponrush.adapters.coupons import PostgresCoupons
from couponrush.adapters.issuer import PostgresIssuer
from couponrush.adapters.requests import PostgresRequestLog
from couponrush.domain.model import CouponStatus, RejectReason, RequestStatus
from tests.support.data import new_coupon, publish_requested
from tests.support.fakes import issue_one

PUBLISHED = "outside.coupon.published.v1"


def issuer(db: asyncpg.Pool) -> PostgresIssuer:
    return PostgresIssuer(db, PUBLISHED)


async def request_rows(db: asyncpg.Pool) -> list[tuple[int, str, str | None]]:
    rows = await db.fetch("SELECT user_id, status, reason FROM coupon_requests ORDER BY requested_at, user_id")
    return [(r["user_id"], r["status"], r["reason"]) for r in rows]


async def test_issuing_inserts_the_holding_counts_it_and_records_the_published_event(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=2))
    event = publish_requested(user_id=7, coupon_id=coupon.id)
    await PostgresRequestLog(db).record_accepted(event)

    outcome = await issue_one(issuer(db), event, datetime.now(UTC))

    assert outcome.status is RequestStatus.ISSUED
    assert outcome.coupon is not None
    assert outcome.coupon.issued_count == 1
    held = await PostgresCoupons(db).held_by(7)
    assert [(h.coupon_id, h.user_id) for h in held] == [(coupon.id, 7)]
    assert await request_rows(db) == [(7, "ISSUED", None)]
    published = await db.fetchrow("SELECT key, payload, headers FROM outbox WHERE topic = $1", PUBLISHED)
    assert published is not None
    assert published["key"] == str(coupon.id)
    body = json.loads(published["payload"])
    assert (body["userId"], body["couponId"], body["issuedCount"], body["quantity"]) == (7, coupon.id, 1, 2)
    assert json.loads(published["headers"])["request-id"] == event.request_id


async def test_a_redelivered_event_changes_nothing(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=5))
    event = publish_requested(user_id=7, coupon_id=coupon.id)
    first = await issue_one(issuer(db), event, datetime.now(UTC))
    second = await issue_one(issuer(db), event, datetime.now(UTC))

    assert (first.status, first.replayed) == (RequestStatus.ISSUED, False)
    assert (second.status, second.replayed) == (RequestStatus.ISSUED, True)
    assert await db.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon.id) == 1
    assert await db.fetchval("SELECT count(*) FROM user_coupons") == 1
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE topic = $1", PUBLISHED) == 1


async def test_a_second_request_of_the_same_user_is_refused_and_recorded(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=5))
    await issue_one(issuer(db), publish_requested(7, coupon.id), datetime.now(UTC))
    outcome = await issue_one(issuer(db), publish_requested(7, coupon.id), datetime.now(UTC))
    assert outcome.reason is RejectReason.ALREADY_ISSUED
    assert await request_rows(db) == [(7, "ISSUED", None), (7, "REJECTED", "ALREADY_ISSUED")]


async def test_the_unique_constraint_refuses_a_second_copy_even_without_the_read(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=5))
    await issue_one(issuer(db), publish_requested(7, coupon.id), datetime.now(UTC))
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO user_coupons (user_id, coupon_id, request_id) VALUES (7, $1, 'manual')", coupon.id
        )


async def test_the_database_refuses_to_count_past_the_quantity(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=1))
    await issue_one(issuer(db), publish_requested(7, coupon.id), datetime.now(UTC))
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE coupons SET issued_count = issued_count + 1 WHERE id = $1", coupon.id)


@pytest.mark.parametrize(
    ("coupon_kwargs", "reason"),
    [
        ({"quantity": 1}, RejectReason.SOLD_OUT),
        ({"expires_in": timedelta(seconds=-1)}, RejectReason.EXPIRED),
        ({"status": CouponStatus.UNPUBLISHABLE}, RejectReason.NOT_OPEN),
    ],
)
async def test_a_coupon_that_cannot_be_issued_is_refused_with_its_reason(
    db: asyncpg.Pool, coupon_kwargs: dict[str, object], reason: RejectReason
) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(**coupon_kwargs))  # type: ignore[arg-type]
    if reason is RejectReason.SOLD_OUT:
        await issue_one(issuer(db), publish_requested(1, coupon.id), datetime.now(UTC))
    outcome = await issue_one(issuer(db), publish_requested(2, coupon.id), datetime.now(UTC))
    assert (outcome.status, outcome.reason) == (RequestStatus.REJECTED, reason)
    assert await db.fetchval("SELECT count(*) FROM user_coupons WHERE user_id = 2") == 0
    assert (2, "REJECTED", reason.value) in await request_rows(db)


async def test_a_request_for_a_coupon_that_does_not_exist_is_recorded_as_refused(db: asyncpg.Pool) -> None:
    outcome = await issue_one(issuer(db), publish_requested(1, 424242), datetime.now(UTC))
    assert outcome.reason is RejectReason.UNKNOWN_COUPON
    assert await request_rows(db) == [(1, "REJECTED", "UNKNOWN_COUPON")]


async def test_concurrent_issues_of_one_coupon_never_exceed_its_quantity(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=10))
    events = [publish_requested(user_id=u % 40 + 1, coupon_id=coupon.id) for u in range(120)]
    outcomes = await asyncio.gather(*(issue_one(issuer(db), e, datetime.now(UTC)) for e in events))

    issued = [o for o in outcomes if o.status is RequestStatus.ISSUED]
    assert len(issued) == 10
    assert len({o.user_id for o in issued}) == 10
    assert await db.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon.id) == 10
    assert await db.fetchval("SELECT count(*) FROM user_coupons WHERE coupon_id = $1", coupon.id) == 10
    refused = {o.reason for o in outcomes if o.status is RequestStatus.REJECTED}
    assert refused <= {RejectReason.SOLD_OUT, RejectReason.ALREADY_ISSUED}
