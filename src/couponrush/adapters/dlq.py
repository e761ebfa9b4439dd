"""Dead-letter topic access for ``couponrush dlq``: read every parked record, re-queue originals via the outbox."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg

from couponrush.adapters import outbox
from couponrush.adapters.kafka import KafkaSource, consumer_config
from couponrush.adapters.kafka_clients import PLAINTEXT, KafkaClientOptions
from couponrush.adapters.kafka_topics import CREATE_TOPICS, TopicPolicy
from couponrush.service.ports import InboundRecord, OutboundMessage


@dataclass(frozen=True, slots=True)
class PostgresRequeue:
    pool: asyncpg.Pool

    async def enqueue(self, message: OutboundMessage) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, message)


def dead_letter_source(
    bootstrap: str,
    topic: str,
    *,
    group: str | None,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    options: KafkaClientOptions = PLAINTEXT,
    policy: TopicPolicy = CREATE_TOPICS,
) -> KafkaSource:
    """A consumer of the DLQ. ``group=None``: a throw-away group that never commits (to list everything)."""
    config = consumer_config(
        bootstrap,
        group or f"couponrush-dlq-list-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        fetch_wait_max_ms=100,
        options=options,
    )
    return KafkaSource(config=config, topics={topic: 1}, policy=policy, options=options)


async def read_all(source: KafkaSource, *, join_timeout_s: float = 15.0, idle_s: float = 2.0) -> list[InboundRecord]:
    """Everything on the topic from the group's position: read until nothing new came for ``idle_s``.

    (The broker's "latest" offsets can't be trusted on Tansu, so the end is found by idleness.)
    The first wait is longer: a new group member receives nothing until it has joined (~3 s).
    """
    loop = asyncio.get_running_loop()
    records: list[InboundRecord] = []
    deadline = loop.time() + join_timeout_s
    while loop.time() < deadline:
        batch = await source.next_batch(500, 0.5)
        if batch:
            records.extend(batch)
            deadline = loop.time() + idle_s
    return sorted(records, key=lambda r: (r.partition, r.offset))
