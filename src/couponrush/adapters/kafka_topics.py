"""Kafka topics the service needs: created by it (``COUPONRUSH_KAFKA_TOPICS=create``), or only verified, for
clusters where it has no admin rights (``verify``).

Either way topics are never created by the broker: relying on auto-creation would let the broker
pick the partition count (Tansu picks 4), which silently changes where keys land.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ClusterMetadata, NewTopic  # type: ignore[attr-defined]

from couponrush.adapters.kafka_clients import PLAINTEXT, Admin, KafkaClientOptions
from couponrush.config import KafkaTopicsMode, Settings

log = logging.getLogger("couponrush.adapters.kafka")


@dataclass(frozen=True, slots=True)
class TopicPolicy:
    """What the service does about the topics it uses."""

    mode: KafkaTopicsMode = "create"
    replication: int = 1
    # min.insync.replicas of the topics it creates; None: the cluster's default.
    min_insync_replicas: int | None = None


CREATE_TOPICS = TopicPolicy()


def topic_policy(settings: Settings) -> TopicPolicy:
    return TopicPolicy(
        mode=settings.kafka_topics,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )


class TopicsNotReady(KafkaException):
    """``verify`` mode: a topic is missing or has another partition count. The message names each, in one line."""


def topic_problems(metadata: ClusterMetadata, topics: Mapping[str, int]) -> list[str]:
    """What is wrong with ``topics`` (name -> expected partitions) on the cluster, one short sentence each."""
    problems: list[str] = []
    for name, partitions in topics.items():
        found = metadata.topics.get(name)
        if found is None:
            problems.append(
                f"topic {name} does not exist (or this principal may not describe it); "
                f"COUPONRUSH_KAFKA_TOPICS=verify creates nothing: create it with {partitions} partition(s)"
            )
        elif found.error is not None:
            problems.append(f"topic {name}: {found.error.str()}")
        elif len(found.partitions) != partitions:
            problems.append(f"topic {name} has {len(found.partitions)} partition(s), expected {partitions}")
    return problems


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication: int = 1,
    timeout: float = 5.0,
    options: KafkaClientOptions = PLAINTEXT,
    policy: TopicPolicy | None = None,
) -> list[str]:
    """Make sure each topic exists with its partition count. Blocking; raises if the broker is away.

    ``create`` (the default, ``policy=None`` means create with ``replication``): create the missing
    ones and return their names; a partition count that differs is only warned about (fixed once
    keys map to partitions: version the topic to change it). ``verify``: create nothing and raise
    ``TopicsNotReady`` naming every missing topic and wrong partition count.
    """
    policy = policy or TopicPolicy(replication=replication)
    admin = Admin(bootstrap, options, timeout)
    metadata = admin.list_topics()
    if policy.mode == "verify":
        problems = topic_problems(metadata, topics)
        if problems:
            raise TopicsNotReady("; ".join(problems))
        return []
    existing = metadata.topics
    for name, partitions in topics.items():
        if name in existing and len(existing[name].partitions) != partitions:
            log.warning(
                "topic %s has %d partitions, configuration says %d: partition counts are fixed "
                "once keys map to partitions; version the topic to change it",
                name,
                len(existing[name].partitions),
                partitions,
            )
    config = {} if policy.min_insync_replicas is None else {"min.insync.replicas": str(policy.min_insync_replicas)}
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=policy.replication, config=config)
        for name, partitions in topics.items()
        if name not in existing
    ]
    created: list[str] = []
    if not missing:
        return created
    futures = admin.call(lambda client: client.create_topics(missing, request_timeout=timeout))
    for name, future in futures.items():
        try:
            future.result(timeout)
            log.info("created topic %s", name)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created
