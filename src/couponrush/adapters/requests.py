"""Accepted requests: the request row and its outbox event, written in one transaction."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from couponrush.adapters import outbox
from couponrush.domain.events import PublishRequested
from couponrush.service.ports import OutboundMessage


def publish_requested_message(topic: str, event: PublishRequested) -> OutboundMessage:
    # Key = coupon id: every request for one coupon lands on one partition, in arrival order.
    return OutboundMessage(
        topic=topic,
        key=str(event.coupon_id),
        payload=event.to_json(),
        headers={"request-id": event.request_id, "event-type": event.type},
    )


@dataclass(frozen=True, slots=True)
class PostgresRequestLog:
    pool: asyncpg.Pool
    topic: str

    async def record_accepted(self, event: PublishRequested) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO coupon_requests (request_id, user_id, coupon_id, requested_at) VALUES ($1, $2, $3, $4)",
                event.request_id,
                event.user_id,
                event.coupon_id,
                event.requested_at,
            )
            await outbox.enqueue(conn, publish_requested_message(self.topic, event))
