"""The one place that builds the object graph: real adapters wired into the service layer.

Every entry point (API, relay, worker, CLI) asks this module for what it needs; nothing else
constructs a driver client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from couponrush.adapters.coupons import PostgresCoupons, PostgresGateSnapshots
from couponrush.adapters.db import create_pool
from couponrush.adapters.decisions import PostgresDecisionListener
from couponrush.adapters.failures import is_infrastructure_failure
from couponrush.adapters.gate import RedisReservingGate
from couponrush.adapters.issuer import PostgresIssuer
from couponrush.adapters.kafka import KafkaDeadLetters, KafkaSink, KafkaSource, consumer_config
from couponrush.adapters.kafka_clients import (
    KafkaClientOptions,
    check_client_options,
    failure_text,
    kafka_client_options,
)
from couponrush.adapters.kafka_topics import TopicsNotReady, ensure_topics, topic_policy
from couponrush.adapters.listings import PostgresListings, PostgresLiveReader
from couponrush.adapters.operations import PostgresOperations
from couponrush.adapters.outbox import PostgresOutbox
from couponrush.adapters.outcome_reads import BatchedRequestStatus
from couponrush.adapters.probes import KafkaProbe, PostgresProbe, RedisProbe
from couponrush.adapters.reconcile import PostgresLedger, RedisGateInspector
from couponrush.adapters.requests import GroupCommitRequestLog, PostgresRequestLog, PostgresRequestStatus
from couponrush.adapters.topic_versions import KafkaTopicAdmin, PostgresTopicVersions
from couponrush.config import Settings, dlq_topic
from couponrush.observability.context import request_id_or_new
from couponrush.observability.health import Probe
from couponrush.observability.instrument import (
    MeteredDeadLetters,
    MeteredRepairs,
    MeteredSink,
    ObservedIssuing,
    ObservedSource,
    TimedGate,
)
from couponrush.observability.metrics import cumulative_buckets
from couponrush.roles.relay import RelayRole
from couponrush.roles.worker import WorkerRole
from couponrush.service.admission import Admission
from couponrush.service.coupon_admin import CouponAdmin
from couponrush.service.dead_letters import ReleasingDeadLetters, RetryPolicy
from couponrush.service.gate_rebuild import GateRebuilder
from couponrush.service.issuing import IssuingService
from couponrush.service.live import LiveView
from couponrush.service.outcomes import RequestOutcomes, Waiters
from couponrush.service.ports import Gate, RecordSource
from couponrush.service.reconcile import Reconciler, RepairCounter
from couponrush.service.stalls import StallWatch
from couponrush.service.topic_versions import TopicRouter, VersionedSource
from couponrush.service.worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    gate: Gate
    rebuilder: GateRebuilder
    # How the request path records accepted requests: a group commit.
    recorder: GroupCommitRequestLog

    @property
    def coupons(self) -> PostgresCoupons:
        return PostgresCoupons(self.pool)

    @property
    def listings(self) -> PostgresListings:
        return PostgresListings(self.pool)

    @property
    def request_status(self) -> PostgresRequestStatus:
        return PostgresRequestStatus(self.pool)

    @property
    def snapshots(self) -> PostgresGateSnapshots:
        return PostgresGateSnapshots(self.pool)

    def admission(self) -> Admission:
        return Admission(
            gate=TimedGate(self.gate),
            coupons=self.coupons,
            requests=self.recorder,
            schedule_rebuild=self.rebuilder.schedule,
            record_timeout_s=self.settings.record_timeout_s,
            new_request_id=request_id_or_new,
        )

    def outcomes(self, waiters: Waiters) -> RequestOutcomes:
        # Thousands of clients woken by one commit read their outcomes in a few statements, not one each.
        return RequestOutcomes(status=BatchedRequestStatus(self.pool), waiters=waiters)

    def live_view(self, latency_route: str) -> LiveView:
        """One per API process: the live page's sampler (reading only while someone watches); its HTTP p99 is
        the ``latency_route``'s, over this host's API processes."""
        return LiveView(
            reader=PostgresLiveReader(self.pool, self.settings.publish_requested_topic),
            http_buckets=lambda: cumulative_buckets("couponrush_http_request_duration_seconds", route=latency_route),
        )

    def coupon_admin(self) -> CouponAdmin:
        return CouponAdmin(coupons=self.coupons, gate=self.gate, schedule_rebuild=self.rebuilder.schedule)

    def issuing(self) -> IssuingService:
        return IssuingService(issuer=PostgresIssuer(self.pool, self.settings.published_topic), gate=self.gate)

    def request_log(self) -> PostgresRequestLog:
        return PostgresRequestLog(self.pool)

    def outbox(self) -> PostgresOutbox:
        return PostgresOutbox(self.pool, self.settings.publish_requested_topic)

    def reconciler(self, counter: RepairCounter | None = None) -> Reconciler:
        return Reconciler(
            snapshots=self.snapshots,
            inspector=RedisGateInspector(self.redis),
            ledger=PostgresLedger(self.pool, self.settings.publish_requested_topic),
            rebuilder=self.rebuilder,
            counter=counter or MeteredRepairs(),
            confirm_after_s=self.settings.rebuild_grace_s,
            stuck_after_s=self.settings.redrive_after_s,
        )

    def operations(self) -> PostgresOperations:
        return PostgresOperations(self.pool, self.settings.publish_requested_topic)

    def probes(self) -> list[Probe]:
        """Readiness: PostgreSQL (schema current), Redis, Kafka. Once per process: the Kafka probe keeps a client."""
        kafka = KafkaProbe(self.settings.kafka_bootstrap_servers, options=kafka_options(self.settings))
        return [PostgresProbe(self.pool), RedisProbe(self.redis), kafka]


def build_recorder(settings: Settings, pool: asyncpg.Pool) -> GroupCommitRequestLog:
    """Recording is bounded by RECORD_TIMEOUT_S in all: half queued at most, half for the transaction."""
    return GroupCommitRequestLog(
        PostgresRequestLog(pool, timeout_s=settings.record_timeout_s / 2),
        queue_wait_s=settings.record_timeout_s / 2,
        max_batch=settings.record_batch_max,
        flushers=settings.record_flushers,
    )


def build_gate(settings: Settings, redis: Redis) -> RedisReservingGate:
    return RedisReservingGate(redis)


@contextlib.asynccontextmanager
async def open_services(settings: Settings, role: str = "cli") -> AsyncIterator[Services]:
    """Everything a process needs; ``role`` names its database sessions (``couponrush-<role>`` in pg_stat_activity)."""
    pool = await create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        application_name=f"couponrush-{role}",
    )
    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    gate = build_gate(settings, redis)
    rebuilder = GateRebuilder(gate=gate, snapshots=PostgresGateSnapshots(pool), grace_s=settings.rebuild_grace_s)
    recorder = build_recorder(settings, pool)
    # The API answers sold-out coupons in-process while it hears every gate change (adapters/gate.py).
    unwatch = asyncio.Event()
    watching = asyncio.create_task(gate.sold_out.watch(unwatch)) if role == "api" else None
    try:
        yield Services(settings=settings, pool=pool, redis=redis, gate=gate, rebuilder=rebuilder, recorder=recorder)
    finally:
        unwatch.set()
        if watching is not None:
            await asyncio.gather(watching, return_exceptions=True)
        await recorder.close()
        await rebuilder.close()
        await redis.aclose()
        await pool.close()


@contextlib.asynccontextmanager
async def listen_for_decisions(settings: Settings, waiters: Waiters) -> AsyncIterator[PostgresDecisionListener]:
    """One LISTEN connection per API process, waking the process's waiters when requests are decided."""
    listener = PostgresDecisionListener(settings.database_url, on_decided=waiters.decided, on_gap=waiters.wake_all)
    listener.start()
    try:
        yield listener
    finally:
        waiters.close()
        await listener.close()


# --- Kafka clients: every one gets the same options (security, pass-through, logging) and topic policy ---


def kafka_options(settings: Settings) -> KafkaClientOptions:
    """COUPONRUSH_KAFKA_SECURITY_PROTOCOL, _SASL_*, _SSL_*, _EXTRA, _LOG_REPEAT_S as librdkafka options."""
    return kafka_client_options(settings)


def kafka_configuration_problem(settings: Settings) -> str | None:
    """Why librdkafka would refuse the Kafka client settings (checked once at start-up), or None."""
    return check_client_options(kafka_options(settings))


def relay_topics(settings: Settings) -> dict[str, int]:
    return {
        settings.publish_requested_topic: settings.kafka_partitions,
        settings.published_topic: settings.kafka_partitions,
    }


def worker_topics(settings: Settings) -> dict[str, int]:
    """The request topic it consumes and the dead-letter topic it writes."""
    return {settings.publish_requested_topic: settings.kafka_partitions, dlq_topic(settings.publish_requested_topic): 1}


def relay_sink(settings: Settings) -> KafkaSink:
    """The relay's producer. It owns the outbound topics, so it is the one that creates them."""
    return KafkaSink(
        bootstrap=settings.kafka_bootstrap_servers,
        topics=relay_topics(settings),
        policy=topic_policy(settings),
        message_timeout_ms=settings.kafka_message_timeout_ms,
        options=kafka_options(settings),
    )


def worker_source(settings: Settings) -> KafkaSource:
    options = kafka_options(settings)
    config = consumer_config(
        settings.kafka_bootstrap_servers,
        settings.consumer_group,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        fetch_wait_max_ms=settings.kafka_fetch_wait_max_ms,
        options=options,
    )
    return KafkaSource(
        config=config,
        topics={settings.publish_requested_topic: settings.kafka_partitions},
        policy=topic_policy(settings),
        options=options,
    )


def worker_dead_letter_sink(settings: Settings) -> KafkaSink:
    return KafkaSink(
        bootstrap=settings.kafka_bootstrap_servers,
        topics={dlq_topic(settings.publish_requested_topic): 1},
        policy=topic_policy(settings),
        message_timeout_ms=settings.kafka_message_timeout_ms,
        options=kafka_options(settings),
    )


def dead_letter_source(settings: Settings, *, group: str | None) -> KafkaSource:
    """``couponrush dlq list|replay``: a consumer of the request topic's dead letters."""
    from couponrush.adapters.dlq import dead_letter_source as source

    return source(
        settings.kafka_bootstrap_servers,
        dlq_topic(settings.publish_requested_topic),
        group=group,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        options=kafka_options(settings),
        policy=topic_policy(settings),
    )


async def require_topics(
    settings: Settings, topics: Mapping[str, int], stop: asyncio.Event, *, retry_s: float = 2.0
) -> None:
    """With COUPONRUSH_KAFKA_TOPICS=verify, before a role starts: wait until the cluster answers, then raise
    ``TopicsNotReady`` (one line naming each missing topic or wrong partition count) unless all are right.
    With ``create`` it does nothing: the role creates what is missing when it first needs it."""
    if settings.kafka_topics != "verify":
        return
    options, policy = kafka_options(settings), topic_policy(settings)
    reported = ""
    while not stop.is_set():
        try:
            await asyncio.to_thread(
                ensure_topics, settings.kafka_bootstrap_servers, topics, options=options, policy=policy
            )
            return
        except TopicsNotReady:
            raise
        except Exception as exc:  # the cluster does not answer (yet): say why once, and wait for it
            if failure_text(exc) != reported:
                reported = failure_text(exc)
                log.warning("cannot verify the Kafka topics yet, retrying: %s", reported)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_s)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.worker_max_attempts,
        base_backoff_s=settings.worker_retry_backoff_s,
        is_infrastructure=is_infrastructure_failure,
    )


def build_worker(services: Services, source: RecordSource, dlq_sink: KafkaSink) -> Worker:
    observed = ObservedSource(source)
    return Worker(
        source=observed,
        issuing=ObservedIssuing(
            issuer=PostgresIssuer(services.pool, services.settings.published_topic),
            gate=services.gate,
            records=observed,
        ),
        dead_letters=ReleasingDeadLetters(
            inner=MeteredDeadLetters(KafkaDeadLetters(dlq_sink)), gate=services.gate, ledger=services.request_log()
        ),
        batch_size=services.settings.worker_batch_size,
        retry=retry_policy(services.settings),
    )


# --- topic versions: the relay writes, and the worker reads, the version recorded in PostgreSQL ---


def topic_versions(services: Services) -> PostgresTopicVersions:
    return PostgresTopicVersions(services.pool)


def topic_admin(settings: Settings) -> KafkaTopicAdmin:
    return KafkaTopicAdmin(
        settings.kafka_bootstrap_servers, policy=topic_policy(settings), options=kafka_options(settings)
    )


def relay_router(services: Services, sink: KafkaSink) -> TopicRouter:
    """The relay's sink routed to the active request-topic version. Build one per relay-lock tenure."""
    return TopicRouter(
        sink=sink, store=topic_versions(services), configured_topic=services.settings.publish_requested_topic
    )


def versioned_worker_source(services: Services, source: KafkaSource, dlq_sink: KafkaSink) -> VersionedSource:
    async def keep_dead_letters(topic: str) -> None:
        dlq_sink.add_topic(dlq_topic(topic), 1)

    return VersionedSource(
        inner=source,
        store=topic_versions(services),
        configured_topic=services.settings.publish_requested_topic,
        configured_partitions=services.settings.kafka_partitions,
        on_subscribe=keep_dead_letters,
    )


# --- the roles (roles/*.py), wired ---


def relay_role(services: Services, sink: KafkaSink) -> RelayRole:
    settings = services.settings
    return RelayRole(
        lock=services.outbox(),
        outbox=services.outbox(),
        new_sink=lambda: relay_router(services, sink),
        stuck=services.request_log(),
        batch_size=settings.relay_batch_size,
        idle_scan_s=settings.relay_idle_scan_s,
        redrive_after_s=settings.redrive_after_s,
        observe=MeteredSink,
    )


def worker_role(services: Services, consumer: KafkaSource, dlq_sink: KafkaSink) -> WorkerRole:
    # Reads the topic version recorded in PostgreSQL, and follows switches at run time.
    source = versioned_worker_source(services, consumer, dlq_sink)
    return WorkerRole(
        source=source,
        worker=build_worker(services, source, dlq_sink),
        snapshots=services.snapshots,
        gate=services.gate,
        reconciler=services.reconciler(),
        lag=consumer,
        fence=services.request_log(),
        orphan_grace_s=services.settings.rebuild_grace_s,
        repairs=MeteredRepairs(),
        stalls=StallWatch(
            reader=services.operations(),
            membership=consumer,
            stall_after_s=services.settings.stall_after_s,
            # Two session timeouts: a member that joined normally has been assigned long before.
            rejoin_after_s=2 * services.settings.kafka_session_timeout_ms / 1000,
        ),
        reconcile_interval_s=services.settings.reconcile_interval_s,
    )
