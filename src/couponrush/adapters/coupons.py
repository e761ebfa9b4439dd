"""Coupons and what users hold, in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from couponrush.domain.model import Coupon, CouponStatus, GateSnapshot, NewCoupon, UserCoupon

COUPON_COLUMNS = "id, name, discount_rate, quantity, issued_count, status, expired_at"


def coupon_from_record(record: asyncpg.Record) -> Coupon:
    return Coupon(
        id=record["id"],
        name=record["name"],
        discount_rate=record["discount_rate"],
        quantity=record["quantity"],
        issued_count=record["issued_count"],
        status=CouponStatus(record["status"]),
        expired_at=record["expired_at"],
    )


@dataclass(frozen=True, slots=True)
class PostgresCoupons:
    pool: asyncpg.Pool

    async def create(self, new: NewCoupon) -> Coupon:
        record = await self.pool.fetchrow(
            "INSERT INTO coupons (name, discount_rate, quantity, status, expired_at)"
            f" VALUES ($1, $2, $3, $4, $5) RETURNING {COUPON_COLUMNS}",
            new.name,
            new.discount_rate,
            new.quantity,
            new.status.value,
            new.expired_at,
        )
        assert record is not None
        return coupon_from_record(record)

    async def get(self, coupon_id: int) -> Coupon | None:
        record = await self.pool.fetchrow(f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1", coupon_id)
        return None if record is None else coupon_from_record(record)

    async def set_status(self, coupon_id: int, status: CouponStatus) -> Coupon | None:
        record = await self.pool.fetchrow(
            f"UPDATE coupons SET status = $2 WHERE id = $1 RETURNING {COUPON_COLUMNS}", coupon_id, status.value
        )
        return None if record is None else coupon_from_record(record)

    async def held_by(self, user_id: int) -> list[UserCoupon]:
        records = await self.pool.fetch(
            "SELECT uc.coupon_id, uc.user_id, c.name, c.discount_rate, uc.issued_at, c.expired_at"
            " FROM user_coupons uc JOIN coupons c ON c.id = uc.coupon_id"
            " WHERE uc.user_id = $1 ORDER BY uc.issued_at, uc.coupon_id",
            user_id,
        )
        return [
            UserCoupon(
                coupon_id=r["coupon_id"],
                user_id=r["user_id"],
                name=r["name"],
                discount_rate=r["discount_rate"],
                issued_at=r["issued_at"],
                expired_at=r["expired_at"],
            )
            for r in records
        ]


@dataclass(frozen=True, slots=True)
class PostgresGateSnapshots:
    """What the admission gate must hold, read from the database (the source of truth)."""

    pool: asyncpg.Pool

    async def snapshot(self, coupon_id: int) -> GateSnapshot | None:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            record = await conn.fetchrow(f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1", coupon_id)
            if record is None:
                return None
            # A user's unit is held by their issued coupon, or else by their latest pending request.
            rows = await conn.fetch(
                "SELECT user_id, request_id FROM ("
                "  SELECT DISTINCT ON (user_id) user_id, request_id FROM coupon_requests"
                "  WHERE coupon_id = $1 AND status = 'PENDING' AND dead_lettered_at IS NULL"
                "  ORDER BY user_id, requested_at DESC"
                ") pending WHERE NOT EXISTS ("
                "  SELECT 1 FROM user_coupons uc WHERE uc.coupon_id = $1 AND uc.user_id = pending.user_id)"
                " UNION ALL SELECT user_id, request_id FROM user_coupons WHERE coupon_id = $1",
                coupon_id,
            )
        return GateSnapshot(
            coupon=coupon_from_record(record), reservations={r["user_id"]: r["request_id"] for r in rows}
        )

    async def open_coupon_ids(self, now: datetime) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT id FROM coupons WHERE status = 'PUBLISHABLE' AND expired_at > $1 ORDER BY id", now
        )
        return [r["id"] for r in rows]

    async def rejected(self, request_ids: Sequence[str]) -> list[tuple[int, int, str]]:
        rows = await self.pool.fetch(
            "SELECT coupon_id, user_id, request_id FROM coupon_requests"
            " WHERE request_id = ANY($1::text[]) AND status = 'REJECTED'",
            list(request_ids),
        )
        return [(r["coupon_id"], r["user_id"], r["request_id"]) for r in rows]

    async def newly_expired(self, since: datetime, now: datetime) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT id FROM coupons WHERE status = 'PUBLISHABLE' AND expired_at > $1 AND expired_at <= $2",
            since,
            now,
        )
        return [r["id"] for r in rows]
