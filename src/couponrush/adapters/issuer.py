"""Issuing one request in one PostgreSQL transaction.

Correctness rests on the database, not on timing:
- the coupon row is locked (``FOR UPDATE``), so issues of one coupon are serialized;
- ``user_coupons_one_per_user`` refuses a second copy even if every read above it were wrong;
- ``coupons_issued_within_quantity`` refuses over-issuing;
- the request row is decided once: a redelivered event finds it decided and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from couponrush.adapters import outbox
from couponrush.adapters.coupons import COUPON_COLUMNS, coupon_from_record
from couponrush.adapters.db import Connection
from couponrush.domain.events import Published, PublishRequested
from couponrush.domain.model import Coupon, IssueOutcome, RejectReason, RequestStatus
from couponrush.service.ports import OutboundMessage, UnprocessableEvent


@dataclass(frozen=True, slots=True)
class PostgresIssuer:
    pool: asyncpg.Pool
    published_topic: str

    async def issue(self, event: PublishRequested, now: datetime) -> IssueOutcome:
        try:
            return await self._issue(event, now)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            # The database refuses this event's data itself: retrying can never succeed.
            raise UnprocessableEvent(f"{type(exc).__name__}: {exc}") from exc

    async def _issue(self, event: PublishRequested, now: datetime) -> IssueOutcome:
        async with self.pool.acquire() as conn, conn.transaction():
            # An event normally arrives with its request row already written at admission;
            # registering it here too makes the worker correct for any well-formed event.
            await conn.execute(
                "INSERT INTO coupon_requests (request_id, user_id, coupon_id, requested_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
                event.request_id,
                event.user_id,
                event.coupon_id,
                event.requested_at,
            )
            request = await conn.fetchrow(
                "SELECT user_id, coupon_id, status, reason FROM coupon_requests WHERE request_id = $1 FOR UPDATE",
                event.request_id,
            )
            assert request is not None
            user_id: int = request["user_id"]
            coupon_id: int = request["coupon_id"]
            if request["status"] != RequestStatus.PENDING:
                return await self._replayed(conn, event.request_id, request)

            record = await conn.fetchrow(f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1 FOR UPDATE", coupon_id)
            if record is None:
                return await self._reject(
                    conn, event.request_id, user_id, coupon_id, None, RejectReason.UNKNOWN_COUPON, now
                )
            coupon = coupon_from_record(record)
            already_holds = bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM user_coupons WHERE user_id = $1 AND coupon_id = $2)",
                    user_id,
                    coupon_id,
                )
            )
            reason = coupon.issue_decision(already_holds=already_holds, now=now)
            if reason is not None:
                return await self._reject(conn, event.request_id, user_id, coupon_id, coupon, reason, now)

            inserted = await conn.fetchval(
                "INSERT INTO user_coupons (user_id, coupon_id, request_id, issued_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT ON CONSTRAINT user_coupons_one_per_user DO NOTHING"
                " RETURNING id",
                user_id,
                coupon_id,
                event.request_id,
                now,
            )
            if inserted is None:  # the constraint caught what the read did not
                return await self._reject(
                    conn, event.request_id, user_id, coupon_id, coupon, RejectReason.ALREADY_ISSUED, now
                )
            await conn.execute("UPDATE coupons SET issued_count = issued_count + 1 WHERE id = $1", coupon_id)
            coupon = coupon.after_issuing_one()
            await conn.execute(
                "UPDATE coupon_requests SET status = 'ISSUED', decided_at = $2 WHERE request_id = $1",
                event.request_id,
                now,
            )
            published = Published(
                request_id=event.request_id,
                user_id=user_id,
                coupon_id=coupon_id,
                issued_at=now,
                issued_count=coupon.issued_count,
                quantity=coupon.quantity,
            )
            await outbox.enqueue(
                conn,
                OutboundMessage(
                    topic=self.published_topic,
                    key=str(coupon_id),
                    payload=published.to_json(),
                    headers={"request-id": event.request_id, "event-type": published.type},
                ),
            )
            return IssueOutcome(
                request_id=event.request_id,
                user_id=user_id,
                coupon_id=coupon_id,
                status=RequestStatus.ISSUED,
                reason=None,
                coupon=coupon,
            )

    @staticmethod
    async def _reject(
        conn: Connection,
        request_id: str,
        user_id: int,
        coupon_id: int,
        coupon: Coupon | None,
        reason: RejectReason,
        now: datetime,
    ) -> IssueOutcome:
        await conn.execute(
            "UPDATE coupon_requests SET status = 'REJECTED', reason = $2, decided_at = $3 WHERE request_id = $1",
            request_id,
            reason.value,
            now,
        )
        return IssueOutcome(
            request_id=request_id,
            user_id=user_id,
            coupon_id=coupon_id,
            status=RequestStatus.REJECTED,
            reason=reason,
            coupon=coupon,
        )

    @staticmethod
    async def _replayed(conn: Connection, request_id: str, request: asyncpg.Record) -> IssueOutcome:
        record = await conn.fetchrow(f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1", request["coupon_id"])
        return IssueOutcome(
            request_id=request_id,
            user_id=request["user_id"],
            coupon_id=request["coupon_id"],
            status=RequestStatus(request["status"]),
            reason=None if request["reason"] is None else RejectReason(request["reason"]),
            coupon=None if record is None else coupon_from_record(record),
            replayed=True,
        )
