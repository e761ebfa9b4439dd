"""Topic versions in PostgreSQL (tables ``topic_versions`` and ``topic_version_drains``) and Kafka topic admin."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from confluent_kafka import KafkaException

from couponrush.adapters.kafka_clients import PLAINTEXT, Admin, KafkaClientOptions
from couponrush.adapters.kafka_topics import CREATE_TOPICS, TopicPolicy, ensure_topics
from couponrush.domain.topic_versions import TopicVersion, VersionState

log = logging.getLogger(__name__)


def _version(record: asyncpg.Record) -> TopicVersion:
    return TopicVersion(
        family=record["family"],
        version=record["version"],
        topic=record["topic"],
        partitions=record["partitions"],
        state=VersionState(record["state"]),
        created_at=record["created_at"],
        activated_at=record["activated_at"],
        switched_at=record["switched_at"],
        drained_at=record["drained_at"],
        retired_at=record["retired_at"],
        drained_partitions=record["drained_partitions"],
    )


@dataclass(frozen=True, slots=True)
class PostgresTopicVersions:
    pool: asyncpg.Pool

    async def versions(self, family: str) -> list[TopicVersion]:
        records = await self.pool.fetch(
            "SELECT v.*, (SELECT count(*) FROM topic_version_drains d"
            "             WHERE d.family = v.family AND d.version = v.version) AS drained_partitions"
            " FROM topic_versions v WHERE v.family = $1 ORDER BY v.version",
            family,
        )
        return [_version(r) for r in records]

    async def request(self, current: TopicVersion | None, new: TopicVersion) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if current is not None:
                await conn.execute(
                    "INSERT INTO topic_versions (family, version, topic, partitions, state, activated_at)"
                    " VALUES ($1, $2, $3, $4, 'ACTIVE', now()) ON CONFLICT DO NOTHING",
                    current.family,
                    current.version,
                    current.topic,
                    current.partitions,
                )
            await conn.execute(
                "INSERT INTO topic_versions (family, version, topic, partitions, state)"
                " VALUES ($1, $2, $3, $4, 'PENDING')",
                new.family,
                new.version,
                new.topic,
                new.partitions,
            )

    async def switch(self, family: str, old_version: int, new_version: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # Old first: the partial unique index allows one ACTIVE version per family.
            old = await conn.execute(
                "UPDATE topic_versions SET state = 'DRAINING' WHERE family = $1 AND version = $2 AND state = 'ACTIVE'",
                family,
                old_version,
            )
            new = await conn.execute(
                "UPDATE topic_versions SET state = 'ACTIVE', activated_at = now()"
                " WHERE family = $1 AND version = $2 AND state = 'PENDING'",
                family,
                new_version,
            )
            if old != "UPDATE 1" or new != "UPDATE 1":
                raise RuntimeError(f"topic versions of {family} changed under the switch ({old}, {new})")

    async def markers_written(self, family: str, version: int) -> None:
        await self.pool.execute(
            "UPDATE topic_versions SET switched_at = now() WHERE family = $1 AND version = $2 AND switched_at IS NULL",
            family,
            version,
        )

    async def mark_drained(self, family: str, version: int, partition: int, marker_offset: int) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO topic_version_drains (family, version, partition, marker_offset)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                family,
                version,
                partition,
                marker_offset,
            )
            # Row lock: two workers finishing their last partitions at once both see the full count.
            row = await conn.fetchrow(
                "SELECT state, partitions FROM topic_versions WHERE family = $1 AND version = $2 FOR UPDATE",
                family,
                version,
            )
            if row is None:
                return False
            drained = await conn.fetchval(
                "SELECT count(*) FROM topic_version_drains WHERE family = $1 AND version = $2", family, version
            )
            if drained < row["partitions"]:
                return False
            if row["state"] == "DRAINING":
                await conn.execute(
                    "UPDATE topic_versions SET state = 'DRAINED', drained_at = now()"
                    " WHERE family = $1 AND version = $2",
                    family,
                    version,
                )
            return True

    async def retire(self, family: str, version: int) -> None:
        await self.pool.execute(
            "UPDATE topic_versions SET state = 'RETIRED', retired_at = now()"
            " WHERE family = $1 AND version = $2 AND state = 'DRAINED'",
            family,
            version,
        )


@dataclass(frozen=True, slots=True)
class KafkaTopicAdmin:
    """``create`` follows the topic policy: with COUPONRUSH_KAFKA_TOPICS=verify it only checks the topic exists."""

    bootstrap: str
    policy: TopicPolicy = CREATE_TOPICS
    timeout: float = 10.0
    options: KafkaClientOptions = PLAINTEXT

    def _admin(self) -> Admin:
        return Admin(self.bootstrap, self.options, self.timeout)

    async def create(self, topics: Mapping[str, int]) -> None:
        await asyncio.to_thread(ensure_topics, self.bootstrap, topics, options=self.options, policy=self.policy)

    async def partitions(self, topic: str) -> int | None:
        def count() -> int | None:
            found = self._admin().list_topics().topics.get(topic)
            return None if found is None or found.error is not None else len(found.partitions)

        return await asyncio.to_thread(count)

    async def delete(self, topic: str) -> None:
        def delete() -> None:
            admin = self._admin()
            futures = admin.call(lambda client: client.delete_topics([topic], request_timeout=self.timeout))
            for name, future in futures.items():
                try:
                    future.result(self.timeout)
                    log.info("deleted topic %s", name)
                except KafkaException as exc:
                    log.warning("could not delete topic %s: %s", name, exc)

        await asyncio.to_thread(delete)
