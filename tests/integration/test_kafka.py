"""The Kafka adapter against a real Kafka-protocol broker (embedded Tansu)."""

from __future__ import annotations

import asyncio

from confluent_kafka.admin import AdminClient

from couponrush.adapters.kafka import KafkaDeadLetters, KafkaSink, KafkaSource, consumer_config, ensure_topics
from couponrush.config import Settings
from couponrush.dev.broker import EmbeddedBroker, free_port
from couponrush.service.ports import InboundRecord, OutboundMessage
from tests.support.kafka import nothing_more, read_all, read_records, source_for


def partitions_of(bootstrap: str, topic: str) -> int:
    return len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics[topic].partitions)


async def test_topics_are_created_with_the_configured_partition_count(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic = topic_prefix + "requests.v1"
    ensure_topics(broker.bootstrap, {topic: 3})
    ensure_topics(broker.bootstrap, {topic: 3})  # idempotent
    assert partitions_of(broker.bootstrap, topic) == 3


async def test_acknowledged_messages_arrive_with_headers_and_one_key_stays_on_one_partition(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic = topic_prefix + "requests.v1"
    sink = KafkaSink(broker.bootstrap, {topic: 3})
    messages = [
        OutboundMessage(topic, str(coupon), f"{coupon}-{n}".encode(), {"request-id": f"r{coupon}-{n}"})
        for n in range(5)
        for coupon in (1, 2, 3, 4)
    ]
    try:
        assert await sink.send_all(messages) == [None] * len(messages)
    finally:
        await sink.close()

    records = await read_all(broker.bootstrap, topic, len(messages))
    by_key: dict[bytes, set[int]] = {}
    for record in records:
        assert record.key is not None
        by_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(partitions) == 1 for partitions in by_key.values())
    coupon_1 = sorted((r for r in records if r.key == b"1"), key=lambda r: r.offset)
    assert [r.value for r in coupon_1] == [f"1-{n}".encode() for n in range(5)]  # order kept per key
    assert coupon_1[0].headers["request-id"] == b"r1-0"


async def test_a_restarted_consumer_resumes_after_the_last_committed_offset(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic = topic_prefix + "requests.v1"
    group = topic_prefix + "coupon"
    sink = KafkaSink(broker.bootstrap, {topic: 1})
    await sink.send_all([OutboundMessage(topic, "1", str(n).encode()) for n in range(6)])
    await sink.close()

    first = source_for(broker.bootstrap, [topic], group)
    await first.start()
    records = await read_records(first, 6)
    await first.commit(records[:4])  # settled 0-3; 4 and 5 were in flight when it "crashed"
    await first.close()

    second = source_for(broker.bootstrap, [topic], group)
    await second.start()
    try:
        redelivered = await read_records(second, 2)
        assert [r.value for r in redelivered] == [b"4", b"5"]
        assert await nothing_more(second) == []
    finally:
        await second.close()


async def test_a_dead_letter_carries_the_original_record_and_the_reason(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic = topic_prefix + "requests.v1"
    sink = KafkaSink(broker.bootstrap, {topic: 1, topic + ".dlq": 1})
    record = InboundRecord(topic, 0, 41, b"9", b"{not json", {"request-id": b"abc"})
    try:
        assert await KafkaDeadLetters(sink).park(record, "MALFORMED", "Invalid JSON: expected value", asyncio.Event())
    finally:
        await sink.close()

    [parked] = await read_all(broker.bootstrap, topic + ".dlq", 1)
    assert parked.value == b"{not json"
    assert parked.key == b"9"
    assert parked.headers["dlq-reason"] == b"MALFORMED"
    assert parked.headers["dlq-error"] == b"Invalid JSON: expected value"
    assert parked.headers["dlq-original-topic"] == topic.encode()
    assert parked.headers["dlq-original-partition"] == b"0"
    assert parked.headers["dlq-original-offset"] == b"41"
    assert parked.headers["request-id"] == b"abc"


async def test_the_sink_reports_failure_while_the_broker_is_down_and_recovers_after_a_restart() -> None:
    own = EmbeddedBroker(port=free_port())
    own.start()
    topic = "outside.coupon.publish.requested.v1"
    sink = KafkaSink(own.bootstrap, {topic: 3}, message_timeout_ms=2000)
    try:
        assert await sink.send_all([OutboundMessage(topic, "1", b"before")]) == [None]
        own.stop()
        [failure] = await sink.send_all([OutboundMessage(topic, "1", b"during")])
        assert failure is not None
        own.start()  # a fresh, empty broker: no topics, no producer ids

        async def send_after() -> list[str | None]:
            while True:
                result = await sink.send_all([OutboundMessage(topic, "1", b"after")])
                if result == [None]:
                    return result
                await asyncio.sleep(0.2)

        assert await asyncio.wait_for(send_after(), 60) == [None]
        assert partitions_of(own.bootstrap, topic) == 3  # re-created with our count, not the broker's default
        records = await read_all(own.bootstrap, topic, 1)
        assert [r.value for r in records] == [b"after"]
    finally:
        await sink.close()
        own.stop()


async def test_a_consumer_with_the_configured_fetch_wait_drains_a_large_backlog(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    """Tansu starves a consumer facing a backlog when fetch.wait.max.ms is very low (10-25 ms)."""
    topic = topic_prefix + "requests.v1"
    sink = KafkaSink(broker.bootstrap, {topic: 1})
    total = 20_000
    try:
        for start in range(0, total, 5_000):
            chunk = [OutboundMessage(topic, "1", str(n).encode()) for n in range(start, start + 5_000)]
            assert set(await sink.send_all(chunk)) == {None}
    finally:
        await sink.close()

    configured = Settings().kafka_fetch_wait_max_ms
    source = KafkaSource(
        config=consumer_config(
            broker.bootstrap,
            topic_prefix + "coupon",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            fetch_wait_max_ms=configured,
        ),
        topics={topic: 1},
    )
    await source.start()
    try:
        records = await read_records(source, total, timeout=90)
    finally:
        await source.close()
    assert [int(r.value or b"-1") for r in records] == list(range(total))


async def test_a_lone_record_is_handed_over_at_once_not_when_the_batch_fills_or_the_poll_times_out(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    topic = topic_prefix + "requests.v1"
    sink = KafkaSink(broker.bootstrap, {topic: 1})
    source = source_for(broker.bootstrap, [topic])
    await source.start()
    try:
        assert await sink.send_all([OutboundMessage(topic, "1", b"first", {})]) == [None]
        await read_records(source, 1)  # joined the group and caught up
        assert await sink.send_all([OutboundMessage(topic, "1", b"lone", {})]) == [None]
        # A poll for up to 500 records with a 60 s timeout must not wait for 499 more, nor for 60 s.
        batch = await asyncio.wait_for(source.next_batch(500, 60.0), timeout=20)
        assert [r.value for r in batch] == [b"lone"]
    finally:
        await sink.close()
        await source.close()
