"""Observability against the real services: readiness probes, operator queries, and one trace from an
HTTP request through the outbox row and a Kafka record into the issuing span."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from couponrush.adapters.coupons import PostgresCoupons
from couponrush.adapters.kafka import KafkaSink
from couponrush.adapters.operations import PostgresOperations
from couponrush.adapters.outbox import PostgresOutbox
from couponrush.adapters.probes import KafkaProbe, PostgresProbe, RedisProbe
from couponrush.adapters.requests import PostgresRequestLog
from couponrush.dev.broker import EmbeddedBroker, free_port
from couponrush.domain.events import PublishRequested
from couponrush.observability import tracing
from couponrush.observability.health import readiness
from couponrush.observability.instrument import ObservedIssuing, ObservedSource
from couponrush.service.ports import InboundRecord
from tests.support.data import new_coupon
from tests.support.fakes import FakeCoupons, FakeGate, FakeIssuer
from tests.support.kafka import source_for

TOPIC = "obs.outside.coupon.publish.requested.v1"


async def test_ready_with_every_service_up_and_503_naming_kafka_when_it_does_not_answer(
    db: asyncpg.Pool, redis: Redis, broker: EmbeddedBroker
) -> None:
    status, body = await readiness([PostgresProbe(db), RedisProbe(redis), KafkaProbe(broker.bootstrap)])
    assert (status, body["data"]) == (200, {"postgres": "UP", "redis": "UP", "kafka": "UP"})

    nobody = KafkaProbe(f"127.0.0.1:{free_port()}", timeout_s=1.0)
    status, body = await readiness([PostgresProbe(db), RedisProbe(redis), nobody])
    assert status == 503
    assert body["data"]["postgres"] == body["data"]["redis"] == "UP"
    assert body["data"]["kafka"].startswith("DOWN")


async def test_operator_queries_count_pending_requests_and_the_outbox(db: asyncpg.Pool) -> None:
    coupon = await PostgresCoupons(db).create(new_coupon(quantity=5))
    log = PostgresRequestLog(db)
    for n in (1, 2):
        await log.record_accepted(
            PublishRequested(request_id=f"r{n}", user_id=n, coupon_id=coupon.id, requested_at=datetime.now(UTC))
        )
    operations = PostgresOperations(db, TOPIC)

    progress = await operations.coupon_progress(coupon.id)
    assert progress is not None
    assert (progress.quantity, progress.issued, progress.pending, progress.unsent) == (5, 0, 2, 2)
    state = await operations.outbox_state()
    assert state.backlog == 2
    assert state.oldest_age_s >= 0
    [row, *_] = await PostgresOutbox(db).unsent(10)
    await PostgresOutbox(db).mark_sent([row.id])
    assert (await operations.outbox_state()).backlog == 1
    assert (await operations.coupon_progress(coupon.id)).unsent == 1  # type: ignore[union-attr]
    assert [p.coupon_id for p in await operations.open_coupon_progress(10)] == [coupon.id]
    assert [c.id for c in await operations.list_coupons(10)] == [coupon.id]
    assert await operations.coupon_progress(coupon.id + 1000) is None


async def test_the_issuing_span_joins_the_trace_of_the_http_request_across_outbox_and_kafka(
    db: asyncpg.Pool, broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic = topic_prefix + "requests"
    coupons = FakeCoupons()
    coupon = await coupons.create(new_coupon(quantity=1))
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("test", exporter=exporter, set_global=False)
    sink = KafkaSink(bootstrap=broker.bootstrap, topics={topic: 1})
    consumer = source_for(broker.bootstrap, [topic])
    try:
        event = PublishRequested(request_id="traced1", user_id=1, coupon_id=coupon.id, requested_at=datetime.now(UTC))
        with tracing.span("POST /api/v1/users/{userId}/coupons/publish", kind="SERVER"):
            await PostgresRequestLog(db).record_accepted(event)  # the outbox row, as the API writes it
        [row] = await PostgresOutbox(db, topic).unsent(10)
        assert "traceparent" in row.message.headers
        assert await sink.send_all([row.message]) == [None]  # what the relay does

        await consumer.start()
        source = ObservedSource(consumer)
        records: list[InboundRecord] = []
        while not records:
            records = await source.next_batch(10, 0.5)
        issuing = ObservedIssuing(issuer=FakeIssuer(coupons), gate=FakeGate(), records=source)
        await issuing.handle_batch([PublishRequested.from_json(records[0].value or b"")])
    finally:
        tracing.disable()
        await consumer.close()
        await sink.close()

    spans = {s.name: s for s in exporter.get_finished_spans()}
    http, issue = spans["POST /api/v1/users/{userId}/coupons/publish"], spans["couponrush.issue"]
    assert http.context is not None
    assert issue.context is not None
    assert issue.context.trace_id == http.context.trace_id
    assert issue.parent is not None
    assert issue.parent.span_id == http.context.span_id
    assert issue.attributes is not None
    assert issue.attributes["couponrush.status"] == "ISSUED"
