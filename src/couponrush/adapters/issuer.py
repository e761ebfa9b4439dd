"""Issuing requests in PostgreSQL: a batch in one transaction (a single delivery is a batch of one).

The adapter runs SQL; what to decide and what each delivery is told is ``domain.issuing.settle``.
Correctness rests on the database, not on timing:
- the coupon rows are locked (``FOR UPDATE``, in id order), so issues of one coupon are serialized;
- ``user_coupons_one_per_user`` refuses a second copy even if every read above it were wrong;
- ``coupons_issued_within_quantity`` refuses over-issuing;
- the request row is decided once: a redelivered event finds it decided and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from couponrush.adapters import outbox
from couponrush.adapters.coupons import COUPON_COLUMNS, coupon_from_record
from couponrush.adapters.db import Connection
from couponrush.domain.events import Published, PublishRequested
from couponrush.domain.issuing import RecordedRequest, Settlement, first_deliveries, settle, status_of
from couponrush.domain.model import IssueOutcome, RejectReason, RequestStatus
from couponrush.service.ports import OutboundMessage, UnprocessableEvent

log = logging.getLogger(__name__)


class _BatchRaced(Exception):
    """The database refused what the batch's reads allowed: redo the batch one request at a time."""


def published_message(topic: str, published: Published) -> OutboundMessage:
    return OutboundMessage(
        topic=topic,
        key=str(published.coupon_id),
        payload=published.to_json(),
        headers={"request-id": published.request_id, "event-type": published.type},
    )


@dataclass(frozen=True, slots=True)
class PostgresIssuer:
    pool: asyncpg.Pool
    published_topic: str

    async def issue_batch(self, events: Sequence[PublishRequested], now: datetime) -> list[IssueOutcome]:
        """Decide every event in one transaction, in the given order; one outcome per event.

        Set-based: a handful of statements whatever the batch size (insert the request rows,
        lock requests and coupons, read who already holds what, then one insert of the issued
        coupons with ``ON CONFLICT DO NOTHING``, one conditional counter update per batch, one
        update of the decisions and one outbox insert).
        """
        if not events:
            return []
        try:
            return await self._issue_batch(events, now)
        except _BatchRaced as exc:
            # Unreachable while every issuer locks the coupon rows first; if it happens anyway,
            # the database's constraints were right and the batch's reads were not: redo singly.
            if len(events) == 1:
                raise  # retried by the worker's policy: the next try reads what the database holds
            log.warning("batch of %d raced (%s); issuing its requests one at a time", len(events), exc)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            # The database refuses this data itself: alone, retrying can never succeed; in a batch,
            # find which event it is, one at a time.
            if len(events) == 1:
                raise UnprocessableEvent(f"{type(exc).__name__}: {exc}") from exc
            log.warning("batch of %d refused by the database (%s); issuing one at a time", len(events), exc)
        return [outcome for event in events for outcome in await self.issue_batch([event], now)]

    async def _issue_batch(self, events: Sequence[PublishRequested], now: datetime) -> list[IssueOutcome]:
        async with self.pool.acquire() as conn, conn.transaction():
            # The coupon rows are the locks (in id order: concurrent batches never deadlock). Every decision
            # about a request is taken under its coupon's lock, so the request rows read below, after it,
            # are current without locking each of them (measured: locking 500 rows per batch cost more
            # than deciding them).
            coupon_rows = await conn.fetch(
                f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
                sorted({e.coupon_id for e in events}),
            )
            # An event normally arrives with its request row already written at admission;
            # registering it here too makes the worker correct for any well-formed event.
            await conn.execute(
                "INSERT INTO coupon_requests (request_id, user_id, coupon_id, requested_at, relayed_at)"
                " SELECT *, now() FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[])"
                " ON CONFLICT (request_id) DO NOTHING",
                [e.request_id for e in events],
                [e.user_id for e in events],
                [e.coupon_id for e in events],
                [e.requested_at for e in events],
            )
            rows = await conn.fetch(
                "SELECT request_id, user_id, coupon_id, status, reason FROM coupon_requests"
                " WHERE request_id = ANY($1::text[])",
                list({e.request_id for e in events}),
            )
            locked = {c["id"] for c in coupon_rows}
            strays = sorted({r["coupon_id"] for r in rows} - locked)
            if strays:
                # A row recorded under another coupon than its event names: lock that one too, then read again.
                coupon_rows = [
                    *coupon_rows,
                    *await conn.fetch(
                        f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
                        strays,
                    ),
                ]
                rows = await conn.fetch(
                    "SELECT request_id, user_id, coupon_id, status, reason FROM coupon_requests"
                    " WHERE request_id = ANY($1::text[])",
                    list({e.request_id for e in events}),
                )
            recorded = {
                r["request_id"]: RecordedRequest(
                    r["request_id"],
                    r["user_id"],
                    r["coupon_id"],
                    RequestStatus(r["status"]),
                    None if r["reason"] is None else RejectReason(r["reason"]),
                )
                for r in rows
            }
            pending = first_deliveries(events, recorded)
            # Probes of the (user_id, coupon_id) unique index, one per user: flat however many rows the
            # table holds (a join on unnest was planned as a scan of every holder of the coupon).
            held = await conn.fetch(
                "SELECT user_id, coupon_id FROM user_coupons WHERE user_id = ANY($1::bigint[])"
                " AND coupon_id = ANY($2::bigint[])",
                list({p.user_id for p in pending}),
                list({p.coupon_id for p in pending}),
            )
            asked = {(p.user_id, p.coupon_id) for p in pending}
            settlement = settle(
                events,
                recorded,
                {c.id: c for c in map(coupon_from_record, coupon_rows)},
                {pair for h in held if (pair := (h["user_id"], h["coupon_id"])) in asked},
                now,
            )
            await self._write(conn, settlement, now)
            return settlement.outcomes

    async def _write(self, conn: Connection, settlement: Settlement, now: datetime) -> None:
        decisions = settlement.decisions
        if not decisions:
            return
        issued = settlement.issued
        if issued:
            inserted = await conn.fetch(
                "INSERT INTO user_coupons (user_id, coupon_id, request_id, issued_at)"
                " SELECT u, c, r, $4 FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS i(u, c, r)"
                " ON CONFLICT ON CONSTRAINT user_coupons_one_per_user DO NOTHING RETURNING request_id",
                [d.request.user_id for d in issued],
                [d.request.coupon_id for d in issued],
                [d.request.request_id for d in issued],
                now,
            )
            if len(inserted) != len(issued):
                raise _BatchRaced(f"{len(issued) - len(inserted)} user coupon(s) already existed")
            counts: dict[int, int] = {}
            for d in issued:
                counts[d.request.coupon_id] = counts.get(d.request.coupon_id, 0) + 1
            # One conditional update for every coupon of the batch; the CHECK constraint backs it.
            updated = await conn.fetch(
                "UPDATE coupons c SET issued_count = c.issued_count + d.n"
                " FROM unnest($1::bigint[], $2::int[]) AS d(id, n)"
                " WHERE c.id = d.id AND c.issued_count + d.n <= c.quantity RETURNING c.id",
                list(counts),
                list(counts.values()),
            )
            if len(updated) != len(counts):
                raise _BatchRaced("a coupon's count moved under the batch")
            await outbox.enqueue_many(
                conn,
                [
                    published_message(
                        self.published_topic,
                        # Built from our own committed rows: a struct, no validation (measured with a
                        # validating model: ~10% of a hot batch's CPU).
                        Published(
                            request_id=d.request.request_id,
                            user_id=d.request.user_id,
                            coupon_id=d.request.coupon_id,
                            issued_at=now,
                            issued_count=d.coupon.issued_count,
                            quantity=d.coupon.quantity,
                        ),
                    )
                    for d in issued
                    if d.coupon is not None
                ],
            )
        await conn.execute(
            "UPDATE coupon_requests r SET status = d.status, reason = d.reason, decided_at = $4"
            " FROM unnest($1::text[], $2::text[], $3::text[]) AS d(id, status, reason)"
            " WHERE r.request_id = d.id",
            [d.request.request_id for d in decisions],
            [status_of(d).value for d in decisions],
            [None if d.reason is None else d.reason.value for d in decisions],
            now,
        )
        # Wake whoever waits for these outcomes (long-poll, SSE): "userId:couponId" pairs, at most 200 per
        # notification (its payload is limited to 8000 bytes); delivered at commit.
        pairs = [f"{d.request.user_id}:{d.request.coupon_id}" for d in decisions]
        await conn.execute(
            "SELECT pg_notify('couponrush_decided', chunk) FROM unnest($1::text[]) AS chunk",
            [",".join(pairs[i : i + 200]) for i in range(0, len(pairs), 200)],
        )
