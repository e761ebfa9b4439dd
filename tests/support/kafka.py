"""Reading topics back in tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from couponrush.adapters.kafka import KafkaSource, consumer_config
from couponrush.service.ports import InboundRecord


def source_for(bootstrap: str, topics: list[str], group: str | None = None, partitions: int = 1) -> KafkaSource:
    config = consumer_config(
        bootstrap,
        group or f"test-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        fetch_wait_max_ms=100,
    )
    return KafkaSource(config=config, topics=dict.fromkeys(topics, partitions))


async def read_records(source: KafkaSource, count: int, timeout: float = 30.0) -> list[InboundRecord]:
    """Consume until ``count`` records arrived (or fail after ``timeout``)."""
    records: list[InboundRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(records)} of {count} records arrived within {timeout}s")
        records.extend(await source.next_batch(count - len(records), 0.5))
    return records


async def read_all(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[InboundRecord]:
    source = source_for(bootstrap, [topic])
    await source.start()
    try:
        return await read_records(source, count, timeout)
    finally:
        await source.close()


async def nothing_more(source: KafkaSource, seconds: float = 2.0) -> list[InboundRecord]:
    extra: list[InboundRecord] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        extra.extend(await source.next_batch(100, 0.3))
        await asyncio.sleep(0)
    return extra


async def find_record(
    bootstrap: str, topic: str, matches: Callable[[InboundRecord], bool], timeout: float = 30.0
) -> InboundRecord:
    """Read ``topic`` from the beginning until a record satisfies ``matches``."""
    source = source_for(bootstrap, [topic])
    await source.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for record in await source.next_batch(500, 0.5):
                if matches(record):
                    return record
        raise AssertionError(f"no matching record on {topic} within {timeout}s")
    finally:
        await source.close()
