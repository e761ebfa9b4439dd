"""Coupons and what users hold, in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from couponrush.domain.model import Coupon, CouponStatus, NewCoupon, UserCoupon

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
