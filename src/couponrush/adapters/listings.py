"""What operators read page by page: coupons with their derived state, holders, requests, changes.

Keyset pagination throughout (``WHERE key > last key ORDER BY key LIMIT n``), on the indexes of
migration 0005, so a page costs the same on page 1 and page 1,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from couponrush.adapters.coupons import COUPON_COLUMNS, PENDING_OF_COUPON, coupon_from_record
from couponrush.domain.model import CouponState, RejectReason, RequestStatus
from couponrush.service.ports import ChangeRecord, CouponSummary, Holder, RequestRow

# Coupon.state in SQL, to filter by it (tests/integration/test_listings.py checks that both agree).
# $1 is "now", pending is PENDING_OF_COUPON.
_STATE = (
    "CASE WHEN c.expired_at <= $1 THEN 'EXPIRED'"
    " WHEN c.status <> 'PUBLISHABLE' THEN 'CLOSED'"
    " WHEN c.opens_at IS NOT NULL AND $1 < c.opens_at THEN 'SCHEDULED'"
    " WHEN c.issued_count + p.pending >= c.quantity THEN 'SOLD_OUT'"
    " ELSE 'OPEN' END"
)
_SUMMARY = (
    f"SELECT * FROM (SELECT {', '.join('c.' + col.strip() for col in COUPON_COLUMNS.split(','))},"
    f" p.pending, {_STATE} AS state"
    f" FROM coupons c CROSS JOIN LATERAL (SELECT {PENDING_OF_COUPON} AS pending) p"
)


def _summary(record: asyncpg.Record) -> CouponSummary:
    return CouponSummary(coupon_from_record(record), int(record["pending"]), CouponState(record["state"]))


@dataclass(frozen=True, slots=True)
class PostgresListings:
    pool: asyncpg.Pool

    async def summaries(
        self, states: Sequence[CouponState], before_id: int | None, limit: int, now: datetime
    ) -> list[CouponSummary]:
        rows = await self.pool.fetch(
            f"{_SUMMARY} WHERE ($2::bigint IS NULL OR c.id < $2)) s"
            " WHERE cardinality($3::text[]) = 0 OR s.state = ANY($3::text[]) ORDER BY s.id DESC LIMIT $4",
            now,
            before_id,
            [s.value for s in states],
            limit,
        )
        return [_summary(r) for r in rows]

    async def summary(self, coupon_id: int, now: datetime) -> CouponSummary | None:
        record = await self.pool.fetchrow(f"{_SUMMARY} WHERE c.id = $2) s", now, coupon_id)
        return None if record is None else _summary(record)

    async def holders(self, coupon_id: int, after: tuple[datetime, int] | None, limit: int) -> list[Holder]:
        rows = await self.pool.fetch(
            "SELECT user_id, request_id, issued_at, id FROM user_coupons WHERE coupon_id = $1"
            " AND ($2::timestamptz IS NULL OR (issued_at, id) > ($2, $3::bigint)) ORDER BY issued_at, id LIMIT $4",
            coupon_id,
            None if after is None else after[0],
            None if after is None else after[1],
            limit,
        )
        return [Holder(r["user_id"], r["request_id"], r["issued_at"], r["id"]) for r in rows]

    async def requests(
        self,
        coupon_id: int,
        after: tuple[datetime, str] | None,
        limit: int,
        statuses: Sequence[RequestStatus] = (),
    ) -> list[RequestRow]:
        rows = await self.pool.fetch(
            "SELECT request_id, user_id, coupon_id, status, reason, requested_at, decided_at, redrives,"
            " dead_lettered_at FROM coupon_requests WHERE coupon_id = $1"
            " AND ($2::timestamptz IS NULL OR (requested_at, request_id) > ($2, $3::text))"
            " AND (cardinality($4::text[]) = 0 OR status = ANY($4::text[]))"
            " ORDER BY requested_at, request_id LIMIT $5",
            coupon_id,
            None if after is None else after[0],
            None if after is None else after[1],
            [s.value for s in statuses],
            limit,
        )
        return [
            RequestRow(
                request_id=r["request_id"],
                user_id=r["user_id"],
                coupon_id=r["coupon_id"],
                status=RequestStatus(r["status"]),
                reason=None if r["reason"] is None else RejectReason(r["reason"]),
                requested_at=r["requested_at"],
                decided_at=r["decided_at"],
                redrives=r["redrives"],
                dead_lettered_at=r["dead_lettered_at"],
            )
            for r in rows
        ]

    async def changes(self, coupon_id: int, after_id: int | None, limit: int) -> list[ChangeRecord]:
        rows = await self.pool.fetch(
            "SELECT id, coupon_id, changed_at, actor, action, before, after FROM coupon_changes"
            " WHERE coupon_id = $1 AND ($2::bigint IS NULL OR id > $2) ORDER BY id LIMIT $3",
            coupon_id,
            after_id,
            limit,
        )
        return [
            ChangeRecord(
                id=r["id"],
                coupon_id=r["coupon_id"],
                changed_at=r["changed_at"],
                actor=r["actor"],
                action=r["action"],
                before=None if r["before"] is None else orjson.loads(r["before"]),
                after=orjson.loads(r["after"]),
            )
            for r in rows
        ]


@dataclass(frozen=True, slots=True)
class PostgresLiveReader:
    """What the live view reads once a second while someone watches (service/live.py)."""

    pool: asyncpg.Pool
    publish_requested_topic: str

    async def live_coupons(self, now: datetime, ended_within_s: float, limit: int) -> list[CouponSummary]:
        rows = await self.pool.fetch(
            f"{_SUMMARY} WHERE c.expired_at > $1 - make_interval(secs => $2)) s ORDER BY s.id DESC LIMIT $3",
            now,
            ended_within_s,
            limit,
        )
        return [_summary(r) for r in rows]

    async def per_second(
        self, coupon_ids: Sequence[int], since: datetime
    ) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
        accepted: dict[int, dict[int, int]] = {}
        issued: dict[int, dict[int, int]] = {}
        if not coupon_ids:
            return accepted, issued
        for into, table, column in (
            (accepted, "coupon_requests", "requested_at"),
            (issued, "user_coupons", "issued_at"),
        ):
            rows = await self.pool.fetch(
                f"SELECT coupon_id, floor(extract(epoch FROM {column}))::bigint AS second, count(*) AS n FROM {table}"
                f" WHERE coupon_id = ANY($1::bigint[]) AND {column} >= $2 GROUP BY 1, 2",
                list(coupon_ids),
                since,
            )
            for r in rows:
                into.setdefault(r["coupon_id"], {})[r["second"]] = r["n"]
        return accepted, issued

    async def unsent(self, coupon_ids: Sequence[int]) -> dict[int, int]:
        # As `couponrush stats` counts it (adapters/operations.py): recorded requests not yet relayed (each
        # row is its own event's outbox entry), plus the request topic's rows of the outbox (replays), by coupon.
        rows = await self.pool.fetch(
            "SELECT coupon_id, sum(n)::bigint AS n FROM ("
            "  SELECT coupon_id, count(*) AS n FROM coupon_requests"
            "  WHERE relayed_at IS NULL AND coupon_id = ANY($2::bigint[]) GROUP BY coupon_id"
            "  UNION ALL"
            "  SELECT key::bigint, count(*) FROM outbox WHERE sent_at IS NULL AND topic = $1"
            "  AND key = ANY($3::text[]) GROUP BY key) u GROUP BY coupon_id",
            self.publish_requested_topic,
            list(coupon_ids),
            [str(c) for c in coupon_ids],
        )
        return {int(r["coupon_id"]): int(r["n"]) for r in rows}
