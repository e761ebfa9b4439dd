"""Read-only queries for operators: metrics gauges, coupon listings and live drop progress."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from couponrush.adapters.coupons import COUPON_COLUMNS, coupon_from_record
from couponrush.domain.model import Coupon
from couponrush.service.ports import CouponProgress, OutboxState, Undecided


@dataclass(frozen=True, slots=True)
class PostgresOperations:
    pool: asyncpg.Pool
    publish_requested_topic: str

    async def outbox_state(self) -> OutboxState:
        # Recorded requests not yet relayed, and outbox rows not yet sent (each by its partial index).
        record = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL)"
            "   + (SELECT count(*) FROM coupon_requests WHERE relayed_at IS NULL) AS backlog,"
            " greatest((SELECT extract(epoch FROM now() - created_at) FROM outbox WHERE sent_at IS NULL"
            "  ORDER BY id LIMIT 1), (SELECT extract(epoch FROM now() - requested_at) FROM coupon_requests"
            "  WHERE relayed_at IS NULL ORDER BY requested_at LIMIT 1)) AS age"
        )
        assert record is not None
        return OutboxState(backlog=int(record["backlog"]), oldest_age_s=max(0.0, float(record["age"] or 0.0)))

    async def oldest_undecided(self) -> Undecided | None:
        # The partial index on pending requests, in arrival order: the first live one is the answer.
        record = await self.pool.fetchrow(
            "SELECT request_id, coupon_id, extract(epoch FROM now() - requested_at) AS age FROM coupon_requests"
            " WHERE status = 'PENDING' AND dead_lettered_at IS NULL ORDER BY requested_at LIMIT 1"
        )
        if record is None:
            return None
        return Undecided(record["request_id"], record["coupon_id"], max(0.0, float(record["age"])))

    async def open_coupon_progress(self, limit: int) -> list[CouponProgress]:
        rows = await self.pool.fetch(
            "SELECT c.id, c.quantity, c.issued_count,"
            " (SELECT count(*) FROM coupon_requests r WHERE r.status = 'PENDING' AND r.coupon_id = c.id) AS pending"
            " FROM coupons c WHERE c.status = 'PUBLISHABLE' AND c.expired_at > now() ORDER BY c.id DESC LIMIT $1",
            limit,
        )
        return [CouponProgress(r["id"], r["quantity"], r["issued_count"], int(r["pending"])) for r in rows]

    async def coupon_progress(self, coupon_id: int) -> CouponProgress | None:
        record = await self.pool.fetchrow(
            "SELECT c.id, c.quantity, c.issued_count,"
            " (SELECT count(*) FROM coupon_requests r WHERE r.status = 'PENDING' AND r.coupon_id = c.id) AS pending,"
            " (SELECT count(*) FROM outbox o WHERE o.sent_at IS NULL AND o.topic = $2 AND o.key = $3)"
            " + (SELECT count(*) FROM coupon_requests r WHERE r.relayed_at IS NULL AND r.coupon_id = c.id)"
            "   AS unsent"
            " FROM coupons c WHERE c.id = $1",
            coupon_id,
            self.publish_requested_topic,
            str(coupon_id),
        )
        if record is None:
            return None
        return CouponProgress(
            record["id"], record["quantity"], record["issued_count"], int(record["pending"]), int(record["unsent"])
        )

    async def list_coupons(self, limit: int) -> list[Coupon]:
        rows = await self.pool.fetch(f"SELECT {COUPON_COLUMNS} FROM coupons ORDER BY id DESC LIMIT $1", limit)
        return [coupon_from_record(r) for r in rows]
