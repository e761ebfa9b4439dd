"""Readiness probes: does PostgreSQL (with a current schema), Redis, the Kafka cluster answer?

Each ``check`` returns "UP" or a short reason; the caller bounds it with a timeout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from confluent_kafka.admin import AdminClient
from redis.asyncio import Redis

from couponrush.adapters.db import pending_migrations


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
    """Asks the cluster for its metadata. One admin client per process, made on first use."""

    bootstrap: str
    timeout_s: float = 2.0
    name: str = "kafka"
    _admin: Any = field(default=None, repr=False)

    async def check(self) -> str:
        if not self.bootstrap.strip():
            return "DOWN: COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS is not set"
        if self._admin is None:
            self._admin = AdminClient(
                {"bootstrap.servers": self.bootstrap, "socket.timeout.ms": int(self.timeout_s * 1000)}
            )
        metadata = await asyncio.to_thread(self._admin.list_topics, timeout=self.timeout_s)
        return "UP" if metadata.brokers else "DOWN: no brokers in metadata"
