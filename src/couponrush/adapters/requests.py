"""Accepted requests: one row each, which is also the outbox of its event (the relay sends it from there).

Recording a batch of accepted requests is one autocommitted statement on a connection the recorder
holds: no BEGIN/COMMIT round trips, no second insert into the outbox, no pool acquire/release (and
its per-release reset query) per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from couponrush.adapters.db import Connection
from couponrush.domain.events import PublishRequested
from couponrush.domain.model import RejectReason, RequestStatus, RequestView
from couponrush.observability import tracing
from couponrush.service.group_commit import GroupCommitter
from couponrush.service.ports import NotRecorded

_RECORD = (
    "INSERT INTO coupon_requests (request_id, user_id, coupon_id, requested_at, traceparent)"
    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::text[])"
    " ON CONFLICT (request_id) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class Accepted:
    event: PublishRequested
    # The caller's trace context (only when tracing is on), so the worker's span joins the HTTP request's trace.
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class PostgresRequestLog:
    pool: asyncpg.Pool
    # Bound on one recording, connection wait included.
    timeout_s: float = 2.0

    async def record_accepted(self, event: PublishRequested) -> None:
        async with self.pool.acquire() as conn:
            if await self.record_many([self.accepted(event)], conn):
                raise NotRecorded("the request was fenced as never recorded (it took longer than the grace period)")

    @staticmethod
    def accepted(event: PublishRequested) -> Accepted:
        """The request with the caller's trace context, taken now: in the caller's context."""
        return Accepted(event, tracing.inject_headers().get("traceparent") if tracing.enabled() else None)

    async def record_many(self, accepted: Sequence[Accepted], conn: Connection) -> set[int]:
        """Record accepted requests in one statement (atomic on its own); each row is its event's outbox entry.

        Returns the positions of requests that were not recorded because their id is already taken:
        the orphan sweep fenced them as never recorded (service/orphans.py), after their API took
        longer than the grace period; they must not count as accepted.

        Raises ``NotRecorded`` when the database refused the statement (nothing was recorded); any
        other failure (the connection lost, the bound reached while it ran) leaves it unknown.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                status = await conn.execute(
                    _RECORD,
                    [a.event.request_id for a in accepted],
                    [a.event.user_id for a in accepted],
                    [a.event.coupon_id for a in accepted],
                    [a.event.requested_at for a in accepted],
                    [a.traceparent for a in accepted],
                )
                if int(status.rsplit(" ", 1)[1]) == len(accepted):
                    return set()
                # Rare: some ids were taken meanwhile (fenced); find which.
                taken = await conn.fetch(
                    "SELECT request_id FROM coupon_requests WHERE request_id = ANY($1::text[]) AND reason = $2",
                    [a.event.request_id for a in accepted],
                    RejectReason.NOT_RECORDED.value,
                )
        except asyncpg.PostgresError as exc:
            if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError):
                raise  # the connection or server went away while it ran: unknown
            raise NotRecorded(f"{type(exc).__name__}: {exc}") from exc
        fenced_ids = {r["request_id"] for r in taken}
        return {i for i, a in enumerate(accepted) if a.event.request_id in fenced_ids}

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
            "INSERT INTO coupon_requests"
            " (request_id, user_id, coupon_id, requested_at, status, reason, decided_at, relayed_at)"
            " SELECT r, u, $3, $4, 'REJECTED', 'NOT_RECORDED', $4, $4"
            " FROM unnest($1::text[], $2::bigint[]) AS f(r, u)"
            " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            [r for _, r in reservations],
            [u for u, _ in reservations],
            coupon_id,
            now,
        )
        return {r["request_id"] for r in rows}

    async def redrive_stuck(self, older_than_s: float, limit: int) -> int:
        """Send again the requests pending longer than ``older_than_s`` whose event was already sent.

        Their row is its own outbox entry: clearing ``relayed_at`` has the relay send it again. Each is
        re-driven at most once per ``older_than_s``. Issuing is idempotent per request id, so a re-drive
        of a request that was merely slow can never issue twice.
        """
        rows = await self.pool.fetch(
            "WITH stuck AS ("
            "  SELECT request_id FROM coupon_requests"
            "  WHERE status = 'PENDING' AND dead_lettered_at IS NULL AND relayed_at IS NOT NULL"
            "    AND requested_at < now() - make_interval(secs => $1)"
            "    AND (redriven_at IS NULL OR redriven_at < now() - make_interval(secs => $1))"
            "  ORDER BY requested_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " UPDATE coupon_requests r SET relayed_at = NULL, redriven_at = now(), redrives = redrives + 1"
            " FROM stuck WHERE r.request_id = stuck.request_id RETURNING r.request_id",
            older_than_s,
            limit,
        )
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
    """Records accepted requests through a group commit: concurrent requests share one statement.

    Each flusher holds a connection of its own for good (taken from the pool on first use, given back
    when it fails or the log closes). Bounded like a single recording: at most ``queue_wait_s`` queued
    (then ``NotRecorded``, since no flush took it), plus one flush bounded by ``log.timeout_s``.
    """

    log: PostgresRequestLog
    queue_wait_s: float = 1.0
    max_batch: int = 500
    flushers: int = 1
    committer: GroupCommitter[Accepted] = field(init=False)
    _idle: list[PoolConnectionProxy] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.committer = GroupCommitter(self._flush, max_batch=self.max_batch, concurrency=self.flushers)

    async def _flush(self, batch: Sequence[Accepted]) -> set[int]:
        if self._idle:
            conn = self._idle.pop()
        else:
            try:
                async with asyncio.timeout(self.log.timeout_s):
                    conn = await self.log.pool.acquire()
            except Exception as exc:
                raise NotRecorded(f"no database connection: {type(exc).__name__}: {exc}") from exc
        try:
            fenced = await self.log.record_many(batch, conn)
        except NotRecorded:
            self._idle.append(conn)  # the statement was refused; the connection is fine
            raise
        except BaseException:
            # Lost, cancelled or timed out mid-statement: never reuse it.
            with contextlib.suppress(Exception):
                await self.log.pool.release(conn)
            raise
        self._idle.append(conn)
        return fenced

    async def record_accepted(self, event: PublishRequested) -> None:
        await self.committer.submit(self.log.accepted(event), self.queue_wait_s)

    async def exists(self, request_id: str) -> bool:
        return await self.log.exists(request_id)

    async def close(self) -> None:
        await self.committer.close()
        while self._idle:
            with contextlib.suppress(Exception):
                await self.log.pool.release(self._idle.pop())


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
