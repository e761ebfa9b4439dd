"""Readiness probes: does PostgreSQL (with a current schema), Redis, the Kafka cluster answer?

Each ``check`` returns "UP" or a short reason; the caller bounds it with a timeout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
from confluent_kafka import KafkaException
from redis.asyncio import Redis

from couponrush.adapters.db import pending_migrations
from couponrush.adapters.kafka_clients import PLAINTEXT, Admin, KafkaClientOptions, failure_text


@dataclass(frozen=True, slots=True)
class PostgresProbe:
    pool: asyncpg.Pool
    name: str = "postgres"

    async def check(self) -> str:
        async with self.pool.acquire() as conn:
            pending = await pending_migrations(conn)
        return "UP" if not pending else f"PENDING_MIGRATIONS({len(pending)})"


@dataclass(frozen=True, slots=True)
class RedisProbe:
    redis: Redis
    name: str = "redis"

    async def check(self) -> str:
        await self.redis.ping()  # type: ignore[misc]
        return "UP"


@dataclass
class KafkaProbe:
    """Asks the cluster for its metadata. One admin client per process, made on first use.

    A failure reads as one line with librdkafka's reason ("DOWN: TLS failed: certificate verify
    failed ..."), not its generic "Broker transport failure"; its own repeated lines are rate-limited.
    """

    bootstrap: str
    timeout_s: float = 2.0
    name: str = "kafka"
    options: KafkaClientOptions = field(default=PLAINTEXT, repr=False)
    _admin: Admin | None = field(default=None, repr=False)

    async def check(self) -> str:
        if not self.bootstrap.strip():
            return "DOWN: COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS is not set"
        try:
            if self._admin is None:  # librdkafka may refuse the settings here (COUPONRUSH_KAFKA_EXTRA)
                self._admin = Admin(self.bootstrap, self.options, self.timeout_s)
            metadata = await asyncio.to_thread(self._admin.list_topics)
        except KafkaException as exc:
            return f"DOWN: {failure_text(exc)}"
        return "UP" if metadata.brokers else "DOWN: no brokers in metadata"
