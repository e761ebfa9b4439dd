"""Moving the request topic from v1 (3 partitions) to v2 (5 partitions) while requests keep arriving.

Real PostgreSQL, Redis and embedded broker; the relay (router + outbox loop) and the worker
(versioned source + issuing) run in-process, as ``couponrush relay`` / ``worker`` wire them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from couponrush.adapters.coupons import PostgresCoupons
from couponrush.adapters.gate import RedisReservingGate
from couponrush.adapters.issuer import PostgresIssuer
from couponrush.adapters.kafka import KafkaDeadLetters, KafkaSink, KafkaSource, consumer_config
from couponrush.adapters.outbox import PostgresOutbox
from couponrush.adapters.requests import PostgresRequestLog
from couponrush.adapters.topic_versions import KafkaTopicAdmin, PostgresTopicVersions
from couponrush.config import Settings
from couponrush.dev.broker import EmbeddedBroker
from couponrush.domain.topic_versions import VersionState, parse_topic, versioned
from couponrush.service.issuing import IssuingService
from couponrush.service.ports import OutboundMessage
from couponrush.service.relay import run_relay
from couponrush.service.topic_versions import TopicRouter, VersionedSource, migrate_topic, retire_drained
from couponrush.service.worker import Worker
from tests.support.data import new_coupon, publish_requested
from tests.support.polling import eventually

QUANTITY = 40
PER_COUPON = 70  # more requests than coupons: who gets one shows the order they were issued in


@dataclass
class CountingSink:
    """The relay's real sink, counting what was acknowledged per topic (to see both versions carried requests)."""

    inner: KafkaSink
    acked: Counter[str] = field(default_factory=Counter)

    async def send_all(self, messages: Sequence[OutboundMessage]) -> list[str | None]:
        results = await self.inner.send_all(messages)
        self.acked.update(m.topic for m, r in zip(messages, results, strict=True) if r is None)
        return results

    def add_topic(self, topic: str, partitions: int) -> None:
        self.inner.add_topic(topic, partitions)


@contextlib.asynccontextmanager
async def running(*loops: Callable[[asyncio.Event], Awaitable[None]]) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(loop(stop)) for loop in loops]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def test_migrating_to_v2_during_a_drop_keeps_each_coupons_order_and_loses_or_doubles_nothing(
    db: asyncpg.Pool, redis: Redis, broker: EmbeddedBroker, settings: Settings
) -> None:
    v1 = settings.publish_requested_topic
    family = parse_topic(v1)
    assert family is not None
    v2 = versioned(family.family, 2)
    store = PostgresTopicVersions(db)
    coupons = [await PostgresCoupons(db).create(new_coupon(quantity=QUANTITY)) for _ in range(4)]
    requests = PostgresRequestLog(db)  # the API keeps writing the v1 name; the relay routes it

    sink = CountingSink(KafkaSink(broker.bootstrap, {v1: 3, settings.published_topic: 3}, message_timeout_ms=10_000))
    router = TopicRouter(sink=sink, store=store, configured_topic=v1)
    consumer = KafkaSource(
        config=consumer_config(
            broker.bootstrap,
            settings.consumer_group,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_wait_max_ms=100,
        ),
        topics={v1: 3},
    )
    dlq = KafkaSink(broker.bootstrap, {v1 + ".dlq": 1})
    source = VersionedSource(inner=consumer, store=store, configured_topic=v1, configured_partitions=3)
    worker = Worker(
        source=source,
        issuing=IssuingService(PostgresIssuer(db, settings.published_topic), RedisReservingGate(redis)),
        dead_letters=KafkaDeadLetters(dlq),
        batch_size=50,
    )
    admin = KafkaTopicAdmin(broker.bootstrap)

    async def drop(stop: asyncio.Event) -> None:
        for n in range(PER_COUPON * len(coupons)):
            coupon = coupons[n % len(coupons)]
            await requests.record_accepted(publish_requested(user_id=1000 + n, coupon_id=coupon.id))
            await asyncio.sleep(0.004)

    async def relay(stop: asyncio.Event) -> None:
        await asyncio.gather(
            router.run(stop, interval_s=0.2),
            run_relay(PostgresOutbox(db, v1), router, stop, batch_size=50, idle_scan_s=0.05),
        )

    async def sent_to(topic: str) -> int:
        return sink.acked[topic]

    try:
        async with running(relay) as stop_relay:
            drop_task = asyncio.create_task(drop(stop_relay))
            await eventually(lambda: sent_to(v1), lambda n: n >= 60, timeout=30, what="v1 carrying requests")

            new = await migrate_topic(store, admin, v1, 2, 5, default_partitions=3)
            assert (new.topic, new.partitions, new.state) == (v2, 5, VersionState.PENDING)

            async def states() -> dict[int, tuple[VersionState, bool]]:
                return {v.version: (v.state, v.switched_at is not None) for v in await store.versions(family.family)}

            # The relay switches between two passes, and marks every v1 partition's end, mid-drop.
            await eventually(
                states,
                lambda s: s == {1: (VersionState.DRAINING, True), 2: (VersionState.ACTIVE, False)},
                timeout=30,
                what="the relay switched to v2",
            )
            await eventually(lambda: sent_to(v2), lambda n: n >= 20, timeout=30, what="v2 carrying requests")
            # Only now does a worker start: v1 holds a backlog while v2 already has requests of the
            # same coupons. It must drain v1 completely before it issues anything from v2.
            async with running(worker.run):
                await drop_task

                async def pending() -> int:
                    return int(await db.fetchval("SELECT count(*) FROM coupon_requests WHERE status = 'PENDING'"))

                await eventually(pending, lambda n: n == 0, timeout=60, what="every request decided")
                assert source.reading == v2
            assert await retire_drained(store, admin, family.family, delete_topics=False)
    finally:
        await sink.inner.close()
        await dlq.close()
        await consumer.close()

    versions = {v.version: v for v in await store.versions(family.family)}
    assert versions[1].state is VersionState.RETIRED
    assert versions[1].drained_partitions == 3
    assert versions[2].state is VersionState.ACTIVE
    assert sink.acked[v1] >= 60 + 3  # requests plus one marker per v1 partition
    assert sink.acked[v2] >= 20

    total = PER_COUPON * len(coupons)
    assert await db.fetchval("SELECT count(*) FROM coupon_requests") == total
    assert await db.fetchval("SELECT count(*) FROM user_coupons") == QUANTITY * len(coupons)
    for coupon in coupons:
        # Arrival order = relay order (the request rows are sent by arrival). The first QUANTITY arrivals
        # hold the coupons, the rest were refused as sold out, and decisions were taken in arrival order:
        # no v2 request overtook v1.
        rows = await db.fetch(
            "SELECT status, reason, decided_at FROM coupon_requests WHERE coupon_id = $1 ORDER BY requested_at",
            coupon.id,
        )
        assert len(rows) == PER_COUPON
        assert [r["status"] for r in rows] == ["ISSUED"] * QUANTITY + ["REJECTED"] * (PER_COUPON - QUANTITY)
        assert {r["reason"] for r in rows[QUANTITY:]} == {"SOLD_OUT"}
        decided = [r["decided_at"] for r in rows]
        assert decided == sorted(decided)
        assert await db.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon.id) == QUANTITY
