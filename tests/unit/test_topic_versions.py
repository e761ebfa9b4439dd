"""Topic versions on fakes: naming, the relay's switch, and the worker's drain bookkeeping."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from couponrush.domain.topic_versions import (
    EVENT_TYPE_HEADER,
    SWITCH_MARKER_TYPE,
    TopicName,
    TopicVersion,
    VersionState,
    consumed_version,
    parse_topic,
    parse_version,
)
from couponrush.service.ports import InboundRecord, OutboundMessage
from couponrush.service.topic_versions import TopicRouter, VersionedSource

V1 = "p.outside.coupon.publish.requested.v1"
V2 = "p.outside.coupon.publish.requested.v2"
FAMILY = "p.outside.coupon.publish.requested"


@dataclass
class MemoryVersions:
    rows: list[TopicVersion] = field(default_factory=list)
    drained: set[tuple[int, int]] = field(default_factory=set)

    def _set(self, version: int, **changes: object) -> None:
        self.rows = [dataclasses.replace(v, **changes) if v.version == version else v for v in self.rows]  # type: ignore[arg-type]

    async def versions(self, family: str) -> list[TopicVersion]:
        return [v for v in self.rows if v.family == family]

    async def request(self, current: TopicVersion | None, new: TopicVersion) -> None:
        self.rows += [v for v in (current, new) if v is not None]

    async def switch(self, family: str, old_version: int, new_version: int) -> None:
        self._set(old_version, state=VersionState.DRAINING)
        self._set(new_version, state=VersionState.ACTIVE)

    async def markers_written(self, family: str, version: int) -> None:
        self._set(version, switched_at=datetime.now(UTC))

    async def mark_drained(self, family: str, version: int, partition: int, marker_offset: int) -> bool:
        self.drained.add((version, partition))
        row = next(v for v in self.rows if v.version == version)
        whole = len({p for v, p in self.drained if v == version}) == row.partitions
        if whole:
            self._set(version, state=VersionState.DRAINED)
        return whole

    async def retire(self, family: str, version: int) -> None:
        self._set(version, state=VersionState.RETIRED)


@dataclass
class RecordingSink:
    sent: list[OutboundMessage] = field(default_factory=list)
    topics: dict[str, int] = field(default_factory=dict)

    async def send_all(self, messages: Sequence[OutboundMessage]) -> list[str | None]:
        self.sent.extend(messages)
        return [None] * len(messages)

    def add_topic(self, topic: str, partitions: int) -> None:
        self.topics[topic] = partitions


@dataclass
class ScriptedSource:
    batches: list[list[InboundRecord]]
    committed: list[tuple[str, int, int]] = field(default_factory=list)
    subscribed: list[Mapping[str, int]] = field(default_factory=list)

    async def next_batch(self, max_records: int, timeout: float) -> list[InboundRecord]:
        return self.batches.pop(0) if self.batches else []

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        self.committed.extend((r.topic, r.partition, r.offset) for r in records)

    async def subscribe(self, topics: Mapping[str, int]) -> None:
        self.subscribed.append(dict(topics))


def record(offset: int, *, marker: bool = False, topic: str = V1, partition: int = 0) -> InboundRecord:
    headers = {EVENT_TYPE_HEADER: SWITCH_MARKER_TYPE.encode()} if marker else {}
    return InboundRecord(topic, partition, offset, b"1", b"{}", headers)


def version(n: int, partitions: int, state: VersionState) -> TopicVersion:
    return TopicVersion(FAMILY, n, f"{FAMILY}.v{n}", partitions, state)


def test_only_the_version_suffix_is_replaced() -> None:
    assert parse_topic(V1) == TopicName(FAMILY, 1)
    assert parse_topic("outside.coupon.publish.requested.v12") == TopicName("outside.coupon.publish.requested", 12)
    assert parse_topic("no-version") is None
    assert parse_topic(V1 + ".dlq") is None
    assert TopicName(FAMILY, 2).name == V2
    assert parse_version("v2") == parse_version("2") == 2
    with pytest.raises(ValueError, match="v2"):
        parse_version("two")


def test_the_worker_reads_the_oldest_undrained_version() -> None:
    draining = [version(1, 3, VersionState.DRAINING), version(2, 5, VersionState.ACTIVE)]
    assert consumed_version(draining) == draining[0]
    drained = [version(1, 3, VersionState.DRAINED), version(2, 5, VersionState.ACTIVE)]
    assert consumed_version(drained) == drained[1]
    assert consumed_version([]) is None


async def test_the_relay_switches_then_marks_the_end_of_every_old_partition_and_routes_to_the_new() -> None:
    store = MemoryVersions([version(1, 3, VersionState.ACTIVE), version(2, 5, VersionState.PENDING)])
    sink = RecordingSink()
    router = TopicRouter(sink=sink, store=store, configured_topic=V1)

    assert await router.step()

    assert [(v.state, v.switched_at is not None) for v in store.rows] == [
        (VersionState.DRAINING, True),
        (VersionState.ACTIVE, False),
    ]
    assert [(m.topic, m.partition, m.headers[EVENT_TYPE_HEADER]) for m in sink.sent] == [
        (V1, p, SWITCH_MARKER_TYPE) for p in range(3)
    ]
    assert sink.topics[V2] == 5
    sink.sent.clear()
    await router.send_all([OutboundMessage(V1, "7", b"x"), OutboundMessage("p.outside.coupon.published.v1", "7", b"y")])
    assert [(m.topic, m.partition) for m in sink.sent] == [(V2, None), ("p.outside.coupon.published.v1", None)]
    assert not await router.step()  # nothing left to do


async def test_a_marker_is_committed_and_its_partition_drained_only_after_everything_before_it() -> None:
    store = MemoryVersions([version(1, 1, VersionState.DRAINING), version(2, 2, VersionState.ACTIVE)])
    inner = ScriptedSource([[record(0), record(1), record(2, marker=True)]])
    source = VersionedSource(inner=inner, store=store, configured_topic=V1, configured_partitions=3, refresh_s=0)
    await source.start()
    assert inner.subscribed == [{V1: 1}]

    batch = await source.next_batch(10, 0.1)
    assert [r.offset for r in batch] == [0, 1]  # the marker is never handed to the worker
    await source.commit(batch[:1])
    assert store.drained == set()
    assert (V1, 0, 2) not in inner.committed

    await source.commit(batch[1:])
    assert (V1, 0, 2) in inner.committed
    assert store.drained == {(1, 0)}
    assert store.rows[0].state is VersionState.DRAINED

    await source.next_batch(10, 0.1)  # follows the switch: now reads v2 only
    assert inner.subscribed[-1] == {V2: 2}
    assert source.reading == V2
