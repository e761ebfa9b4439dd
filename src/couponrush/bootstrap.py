"""The one place that builds the object graph: real adapters wired into the service layer.

Every entry point (API, relay, worker, CLI) asks this module for what it needs; nothing else
constructs a driver client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from couponrush.adapters.coupons import PostgresCoupons
from couponrush.adapters.db import create_pool
from couponrush.adapters.gate import RedisFlagGate
from couponrush.adapters.issuer import PostgresIssuer
from couponrush.adapters.kafka import KafkaDeadLetters, KafkaSink, KafkaSource, consumer_config
from couponrush.adapters.outbox import PostgresOutbox
from couponrush.adapters.requests import PostgresRequestLog
from couponrush.config import Settings, dlq_topic
from couponrush.service.admission import Admission
from couponrush.service.issuing import IssuingService
from couponrush.service.worker import Worker


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis

    @property
    def coupons(self) -> PostgresCoupons:
        return PostgresCoupons(self.pool)

    @property
    def gate(self) -> RedisFlagGate:
        return RedisFlagGate(self.redis)

    def admission(self) -> Admission:
        return Admission(
            gate=self.gate,
            coupons=self.coupons,
            requests=PostgresRequestLog(self.pool, self.settings.publish_requested_topic),
        )

    def issuing(self) -> IssuingService:
        return IssuingService(issuer=PostgresIssuer(self.pool, self.settings.published_topic), gate=self.gate)

    def outbox(self) -> PostgresOutbox:
        return PostgresOutbox(self.pool)


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    pool = await create_pool(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield Services(settings=settings, pool=pool, redis=redis)
    finally:
        await redis.aclose()
        await pool.close()


def relay_sink(settings: Settings) -> KafkaSink:
    """The relay's producer. It owns the outbound topics, so it is the one that creates them."""
    return KafkaSink(
        bootstrap=settings.kafka_bootstrap_servers,
        topics={
            settings.publish_requested_topic: settings.kafka_partitions,
            settings.published_topic: settings.kafka_partitions,
        },
        replication=settings.kafka_replication_factor,
        message_timeout_ms=settings.kafka_message_timeout_ms,
    )


def worker_source(settings: Settings) -> KafkaSource:
    config = consumer_config(
        settings.kafka_bootstrap_servers,
        settings.consumer_group,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        fetch_wait_max_ms=settings.kafka_fetch_wait_max_ms,
    )
    return KafkaSource(
        config=config,
        topics={settings.publish_requested_topic: settings.kafka_partitions},
        replication=settings.kafka_replication_factor,
    )


def worker_dead_letter_sink(settings: Settings) -> KafkaSink:
    return KafkaSink(
        bootstrap=settings.kafka_bootstrap_servers,
        topics={dlq_topic(settings.publish_requested_topic): 1},
        replication=settings.kafka_replication_factor,
        message_timeout_ms=settings.kafka_message_timeout_ms,
    )


def build_worker(services: Services, source: KafkaSource, dlq_sink: KafkaSink) -> Worker:
    return Worker(
        source=source,
        issuing=services.issuing(),
        dead_letters=KafkaDeadLetters(dlq_sink),
        batch_size=services.settings.worker_batch_size,
    )
