"""Coupons and what users hold, in PostgreSQL; every operator's change of a coupon is recorded with it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from couponrush.adapters.db import Connection
from couponrush.domain.model import Coupon, CouponStatus, GateSnapshot, NewCoupon, UserCoupon

log = logging.getLogger(__name__)

COUPON_COLUMNS = "id, name, discount_rate, quantity, issued_count, status, expired_at, opens_at"
# A coupon's accepted requests not yet decided; dead letters aside (their unit went back to the gate).
PENDING_OF_COUPON = (
    "(SELECT count(*) FROM coupon_requests r"
    " WHERE r.coupon_id = c.id AND r.status = 'PENDING' AND r.dead_lettered_at IS NULL)"
)


def coupon_from_record(record: asyncpg.Record) -> Coupon:
    return Coupon(
        id=record["id"],
        name=record["name"],
        discount_rate=record["discount_rate"],
        quantity=record["quantity"],
        issued_count=record["issued_count"],
        status=CouponStatus(record["status"]),
        expired_at=record["expired_at"],
        opens_at=record["opens_at"],
    )


def _terms(coupon: Coupon | NewCoupon) -> dict[str, Any]:
    """What an operator sets, as the change record keeps it (the wire's names)."""
    return {
        "name": coupon.name,
        "discountRate": str(coupon.discount_rate),
        "quantity": coupon.quantity,
        "status": coupon.status.value,
        "expiredAt": coupon.expired_at.isoformat(),
        "opensAt": None if coupon.opens_at is None else coupon.opens_at.isoformat(),
    }


async def _record_change(
    conn: Connection, coupon_id: int, actor: str, action: str, before: Coupon | None, after: Coupon
) -> None:
    await conn.execute(
        "INSERT INTO coupon_changes (coupon_id, actor, action, before, after)"
        " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)",
        coupon_id,
        actor,
        action,
        None if before is None else orjson.dumps(_terms(before)).decode(),
        orjson.dumps(_terms(after)).decode(),
    )


@dataclass(frozen=True, slots=True)
class PostgresCouponChange:
    """One coupon under its change lock (see ``PostgresCoupons.changing``)."""

    conn: Connection
    coupon: Coupon
    pending: int

    async def save(self, after: Coupon, *, actor: str, action: str) -> Coupon:
        async with self.conn.transaction():
            record = await self.conn.fetchrow(
                "UPDATE coupons SET name = $2, quantity = $3, expired_at = $4, opens_at = $5"
                f" WHERE id = $1 RETURNING {COUPON_COLUMNS}",
                self.coupon.id,
                after.name,
                after.quantity,
                after.expired_at,
                after.opens_at,
            )
            assert record is not None  # coupons are never deleted
            saved = coupon_from_record(record)
            await _record_change(self.conn, saved.id, actor, action, self.coupon, saved)
        return saved


@dataclass(frozen=True, slots=True)
class PostgresCoupons:
    pool: asyncpg.Pool

    async def create(self, new: NewCoupon, *, actor: str = "system") -> Coupon:
        async with self.pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(
                "INSERT INTO coupons (name, discount_rate, quantity, status, expired_at, opens_at)"
                f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COUPON_COLUMNS}",
                new.name,
                new.discount_rate,
                new.quantity,
                new.status.value,
                new.expired_at,
                new.opens_at,
            )
            assert record is not None
            coupon = coupon_from_record(record)
            await _record_change(conn, coupon.id, actor, "CREATE", None, coupon)
        return coupon

    async def get(self, coupon_id: int) -> Coupon | None:
        record = await self.pool.fetchrow(f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1", coupon_id)
        return None if record is None else coupon_from_record(record)

    async def set_status(self, coupon_id: int, status: CouponStatus, *, actor: str = "system") -> Coupon | None:
        async with self.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1 FOR UPDATE", coupon_id)
            if before is None:
                return None
            record = await conn.fetchrow(
                f"UPDATE coupons SET status = $2 WHERE id = $1 RETURNING {COUPON_COLUMNS}", coupon_id, status.value
            )
            assert record is not None
            coupon = coupon_from_record(record)
            action = "OPEN" if status is CouponStatus.PUBLISHABLE else "CLOSE"
            await _record_change(conn, coupon_id, actor, action, coupon_from_record(before), coupon)
        return coupon

    @contextlib.asynccontextmanager
    async def changing(self, coupon_id: int) -> AsyncIterator[PostgresCouponChange | None]:
        """Serialized per coupon by a session advisory lock held from entering to leaving, so that a change's
        gate writes after its commit cannot interleave with another change of the same coupon."""
        key = f"couponrush.coupon:{coupon_id}"
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
            try:
                record = await conn.fetchrow(
                    f"SELECT {COUPON_COLUMNS}, {PENDING_OF_COUPON} AS pending FROM coupons c WHERE id = $1",
                    coupon_id,
                )
                yield (
                    None
                    if record is None
                    else PostgresCouponChange(conn, coupon_from_record(record), int(record["pending"]))
                )
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
                except Exception:
                    # A lock left on a pooled connection would block this coupon's changes for good.
                    log.warning("could not release the change lock of coupon %s; dropping the connection", coupon_id)
                    conn.terminate()

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
