"""Read-only views for reconciliation: a gate's state in Redis, a coupon's ledger in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from couponrush.adapters.gate import gate_key, holders_key
from couponrush.service.reconcile import GateView, LedgerStats


@dataclass(frozen=True, slots=True)
class RedisGateInspector:
    redis: Redis

    async def inspect(self, coupon_id: int) -> GateView | None:
        async with self.redis.pipeline(transaction=True) as pipe:  # one coupon = one slot: MULTI is fine
            pipe.hgetall(gate_key(coupon_id))
            pipe.hgetall(holders_key(coupon_id))
            gate, holders = await pipe.execute()
        if not gate or b"open" not in gate:
            return None
        return GateView(
            rebuilding=bool(gate.get(b"rebuilding")),
            quantity=int(gate.get(b"quantity", b"0")),
            stock=int(gate.get(b"stock", b"0")),
            holders={int(user): request.decode() for user, request in holders.items()},
        )


@dataclass(frozen=True, slots=True)
class PostgresLedger:
    pool: asyncpg.Pool
    requests_topic: str

    async def stats(self, coupon_id: int, stuck_after_s: float) -> LedgerStats | None:
        row = await self.pool.fetchrow(
            "SELECT c.quantity, c.issued_count,"
            " (SELECT count(*) FROM user_coupons uc WHERE uc.coupon_id = c.id) AS issued_rows,"
            " count(r.*) FILTER (WHERE r.status = 'PENDING') AS pending,"
            " count(r.*) FILTER (WHERE r.status = 'REJECTED') AS rejected,"
            " count(r.*) FILTER (WHERE r.status = 'PENDING' AND r.dead_lettered_at IS NOT NULL) AS dead_lettered,"
            " count(r.*) FILTER (WHERE r.status = 'PENDING' AND r.dead_lettered_at IS NULL"
            "   AND r.requested_at < now() - make_interval(secs => $3) AND r.relayed_at IS NOT NULL) AS stuck,"
            " count(r.*) FILTER (WHERE r.relayed_at IS NULL)"
            " + (SELECT count(*) FROM outbox o WHERE o.sent_at IS NULL AND o.topic = $2"
            "   AND o.key = c.id::text) AS unsent_outbox"
            " FROM coupons c LEFT JOIN coupon_requests r ON r.coupon_id = c.id"
            " WHERE c.id = $1 GROUP BY c.id",
            coupon_id,
            self.requests_topic,
            stuck_after_s,
        )
        if row is None:
            return None
        stuck_ids: list[str] = []
        if row["stuck"]:
            stuck_ids = [
                r["request_id"]
                for r in await self.pool.fetch(
                    "SELECT request_id FROM coupon_requests r WHERE r.coupon_id = $1 AND r.status = 'PENDING'"
                    " AND r.dead_lettered_at IS NULL AND r.requested_at < now() - make_interval(secs => $2)"
                    " AND r.relayed_at IS NOT NULL ORDER BY r.requested_at LIMIT 10",
                    coupon_id,
                    stuck_after_s,
                )
            ]
        return LedgerStats(
            quantity=row["quantity"],
            issued_count=row["issued_count"],
            issued_rows=row["issued_rows"],
            pending=row["pending"],
            rejected=row["rejected"],
            dead_lettered=row["dead_lettered"],
            unsent_outbox=row["unsent_outbox"],
            stuck=row["stuck"],
            stuck_ids=tuple(stuck_ids),
        )
