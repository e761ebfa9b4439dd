"""The harness's kafka_partition agrees with the relay's producer (librdkafka, murmur2_random) on where a key lands."""

from __future__ import annotations

import uuid

from confluent_kafka import Message, Producer

from couponrush.adapters.kafka_topics import ensure_topics
from couponrush.dev.broker import EmbeddedBroker
from couponrush_bench.harness import kafka_partition


def test_keys_land_where_the_producer_puts_them(broker: EmbeddedBroker) -> None:
    landed: dict[tuple[int, str], int] = {}
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    for partitions in (3, 6):
        topic = f"keys.{uuid.uuid4().hex[:8]}.p{partitions}"
        ensure_topics(broker.bootstrap, {topic: partitions})
        for key in [str(n) for n in range(1, 60)] + ["", "abc", "coupon-12345"]:

            def delivered(error: object, message: Message, at: tuple[int, str] = (partitions, key)) -> None:
                assert error is None, error
                landed[at] = message.partition() or 0

            producer.produce(topic, b"x", key=key.encode(), on_delivery=delivered)
    assert producer.flush(10) == 0
    assert landed, "nothing was delivered"
    assert {at: kafka_partition(at[1], at[0]) for at in landed} == landed
