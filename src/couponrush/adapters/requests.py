"""Accepted requests: the request row and its outbox event, written in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from couponrush.adapters import outbox
from couponrush.domain.events import PublishRequested
from couponrush.domain.model import RejectReason, RequestStatus, RequestView
from couponrush.observability import tracing
from couponrush.service.group_commit import GroupCommitter
from couponrush.service.ports import NotRecorded, OutboundMessage


def publish_requested_message(topic: str, event: PublishRequested) -> OutboundMessage:
    # Key = coupon id: every request for one coupon lands on one partition, in arrival order.
    return OutboundMessage(
        topic=topic,
        key=str(event.coupon_id),
        payload=event.to_json(),
        # traceparent (only when tracing is on) lets the worker's span join the HTTP request's trace.
        headers={"request-id": event.request_id, "event-type": event.type, **tracing.inject_headers()},
    )


@dataclass(frozen=True, slots=True)
class Accepted:
    event: PublishRequested
    message: OutboundMessage


@dataclass(frozen=True, slots=True)
class PostgresRequestLog:
    pool: asyncpg.Pool
    topic: str
    # Bound on one recording transaction, pool wait included.
    timeout_s: float = 2.0

    async def record_accepted(self, event: PublishRequested) -> None:
        if await self.record_many([self.accepted(event)]):
            raise NotRecorded("the request was fenced as never recorded (it took longer than the grace period)")

    def accepted(self, event: PublishRequested) -> Accepted:
        """The request with its outbox message, built now: in the caller's context (its trace)."""
        return Accepted(event, publish_requested_message(self.topic, event))

    async def record_many(self, accepted: Sequence[Accepted]) -> set[int]:
        """Record accepted requests and their outbox events in one transaction (one statement each).

        Returns the positions of requests that were not recorded because their id is already taken:
        the orphan sweep fenced them as never recorded (service/orphans.py), after their API took
        longer than the grace period; they must not count as accepted.

        Raises ``NotRecorded`` when the failure came before COMMIT was sent (nothing was recorded);
        a failure during COMMIT propagates as it is: the outcome is unknown.
        """
        committing = False
        try:
            async with asyncio.timeout(self.timeout_s), self.pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    inserted = await conn.fetch(
                        "INSERT INTO coupon_requests (request_id, user_id, coupon_id, requested_at)"
                        " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[])"
                        " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                        [a.event.request_id for a in accepted],
                        [a.event.user_id for a in accepted],
                        [a.event.coupon_id for a in accepted],
                        [a.event.requested_at for a in accepted],
                    )
                    recorded = {r["request_id"] for r in inserted}
                    fenced = {i for i, a in enumerate(accepted) if a.event.request_id not in recorded}
                    await outbox.enqueue_many(conn, [a.message for i, a in enumerate(accepted) if i not in fenced])
                except BaseException:
                    with contextlib.suppress(Exception):
                        await transaction.rollback()
                    raise
                committing = True
                await transaction.commit()
                return fenced
        except Exception as exc:
            if committing:
                raise
            raise NotRecorded(f"{type(exc).__name__}: {exc}") from exc

    async def fence_unrecorded(
        self, coupon_id: int, reservations: Sequence[tuple[int, str]], now: datetime
    ) -> set[str]:
        """Of these reserved requests, fence those never recorded; returns their ids.

        A fenced request gets its row now (REJECTED, NOT_RECORDED), so a recording still in flight
        for it can never commit (its insert finds the id taken); ``ON CONFLICT DO NOTHING`` waits for
        such a recording to commit or abort first, so "recorded" and "fenced" never both hold.
        """
        if not reservations:
            return set()
        rows = await self.pool.fetch(
            "INSERT INTO coupon_requests (request_id, user_id, coupon_id, requested_at, status, reason, decided_at)"
            " SELECT r, u, $3, $4, 'REJECTED', 'NOT_RECORDED', $4 FROM unnest($1::text[], $2::bigint[]) AS f(r, u)"
            " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            [r for _, r in reservations],
            [u for u, _ in reservations],
            coupon_id,
            now,
        )
        return {r["request_id"] for r in rows}

    async def redrive_stuck(self, older_than_s: float, limit: int) -> int:
        """Publish again the requests pending for longer than ``older_than_s`` whose event is not queued.

        Each is re-driven at most once per ``older_than_s``. Issuing is idempotent per request id,
        so a re-drive of a request that was merely slow can never issue twice.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "WITH stuck AS ("
                "  SELECT request_id FROM coupon_requests r"
                "  WHERE status = 'PENDING' AND dead_lettered_at IS NULL"
                "    AND requested_at < now() - make_interval(secs => $1)"
                "    AND (redriven_at IS NULL OR redriven_at < now() - make_interval(secs => $1))"
                "    AND NOT EXISTS (SELECT 1 FROM outbox o"
                "                    WHERE o.sent_at IS NULL AND o.headers->>'request-id' = r.request_id)"
                "  ORDER BY requested_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " UPDATE coupon_requests r SET redriven_at = now(), redrives = redrives + 1 FROM stuck"
                " WHERE r.request_id = stuck.request_id"
                " RETURNING r.request_id, r.user_id, r.coupon_id, r.requested_at, r.redrives",
                older_than_s,
                limit,
            )
            for row in sorted(rows, key=lambda r: r["requested_at"]):
                event = PublishRequested(
                    request_id=row["request_id"],
                    user_id=row["user_id"],
                    coupon_id=row["coupon_id"],
                    requested_at=row["requested_at"],
                )
                message = publish_requested_message(self.topic, event)
                headers = {**message.headers, "redrive": str(row["redrives"])}
                await outbox.enqueue(conn, OutboundMessage(message.topic, message.key, message.payload, headers))
        return len(rows)

    async def mark_dead_lettered(self, request_id: str, error: str) -> bool:
        marked = await self.pool.fetchval(
            "UPDATE coupon_requests SET dead_lettered_at = now(), dead_letter_error = $2"
            " WHERE request_id = $1 AND status = 'PENDING' RETURNING 1",
            request_id,
            error,
        )
        return marked is not None

    async def revive(self, request_id: str) -> bool:
        revived = await self.pool.fetchval(
            "UPDATE coupon_requests SET dead_lettered_at = NULL, dead_letter_error = NULL"
            " WHERE request_id = $1 AND status = 'PENDING' AND dead_lettered_at IS NOT NULL RETURNING 1",
            request_id,
        )
        return revived is not None

    async def exists(self, request_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM coupon_requests WHERE request_id = $1", request_id))


@dataclass
class GroupCommitRequestLog:
    """Records accepted requests through a group commit: concurrent requests share one transaction.

    Bounded like a single recording: at most ``queue_wait_s`` queued (then ``NotRecorded``, since
    no flush took it), plus one flush bounded by ``log.timeout_s``.
    """

    log: PostgresRequestLog
    queue_wait_s: float = 1.0
    max_batch: int = 500
    flushers: int = 2
    committer: GroupCommitter[Accepted] = field(init=False)

    def __post_init__(self) -> None:
        self.committer = GroupCommitter(self.log.record_many, max_batch=self.max_batch, concurrency=self.flushers)

    async def record_accepted(self, event: PublishRequested) -> None:
        await self.committer.submit(self.log.accepted(event), self.queue_wait_s)

    async def exists(self, request_id: str) -> bool:
        return await self.log.exists(request_id)

    async def close(self) -> None:
        await self.committer.close()


@dataclass(frozen=True, slots=True)
class PostgresRequestStatus:
    pool: asyncpg.Pool

    async def latest(self, user_id: int, coupon_id: int) -> RequestView | None:
        record = await self.pool.fetchrow(
            "SELECT r.request_id, r.user_id, r.coupon_id, r.status, r.reason, r.requested_at, r.decided_at,"
            " uc.issued_at FROM coupon_requests r"
            " LEFT JOIN user_coupons uc"
            "   ON uc.user_id = r.user_id AND uc.coupon_id = r.coupon_id AND uc.request_id = r.request_id"
            " WHERE r.user_id = $1 AND r.coupon_id = $2 ORDER BY r.requested_at DESC LIMIT 1",
            user_id,
            coupon_id,
        )
        if record is None:
            return None
        return RequestView(
            request_id=record["request_id"],
            user_id=record["user_id"],
            coupon_id=record["coupon_id"],
            status=RequestStatus(record["status"]),
            reason=None if record["reason"] is None else RejectReason(record["reason"]),
            requested_at=record["requested_at"],
            decided_at=record["decided_at"],
            issued_at=record["issued_at"],
        )
