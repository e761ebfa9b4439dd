"""Moving the request topic to a new version (new partition count) while a drop runs.

Three parts, one per role:

- ``TopicRouter`` wraps the relay's sink. It sends every message of the versioned family to the
  ACTIVE version's topic (outbox rows keep the name the API wrote). Between two relay passes
  (under its lock, so no send is in flight) it carries out a requested switch: first the database
  flips ACTIVE to the new version, then one marker record goes to every partition of the old one.
  Only the active relay (advisory lock) runs it, so nothing is written to the old topic after its
  markers: a marker is the end of its partition.
- ``VersionedSource`` wraps the worker's consumer. It reads exactly one version: the oldest one
  still DRAINING, else the ACTIVE one. Markers are not handed to the worker; once everything before
  a marker is committed, it commits past the marker and records that partition drained. When every
  partition is, the version is DRAINED and the source subscribes to the next one. So no record of
  the new version is issued before every record of the old one: per coupon, arrival order holds.
- ``migrate_topic`` / ``retire_drained`` serve ``couponrush topics migrate``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from couponrush.domain.topic_versions import (
    EVENT_TYPE_HEADER,
    SWITCH_MARKER_TYPE,
    TopicVersion,
    VersionState,
    active_topic,
    consumed_version,
    dlq_topic,
    parse_topic,
    pending_switch,
    versioned,
)
from couponrush.service.logs import failed
from couponrush.service.ports import (
    InboundRecord,
    OutboundMessage,
    SubscribingSource,
    TopicAdmin,
    TopicSink,
    TopicVersionStore,
)
from couponrush.service.signals import sleep_unless

log = logging.getLogger(__name__)


def is_switch_marker(record: InboundRecord) -> bool:
    return record.headers.get(EVENT_TYPE_HEADER) == SWITCH_MARKER_TYPE.encode()


def switch_markers(old: TopicVersion, new_topic: str) -> list[OutboundMessage]:
    payload = json.dumps({"type": SWITCH_MARKER_TYPE, "from": old.topic, "to": new_topic}).encode()
    headers = {EVENT_TYPE_HEADER: SWITCH_MARKER_TYPE, "switch-to": new_topic}
    return [OutboundMessage(old.topic, None, payload, headers, partition=p) for p in range(old.partitions)]


@dataclass
class TopicRouter:
    """The relay's sink, routed to the active topic version (see the module docstring)."""

    sink: TopicSink
    store: TopicVersionStore
    configured_topic: str
    _active: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def family(self) -> str | None:
        name = parse_topic(self.configured_topic)
        return None if name is None else name.family

    @property
    def active(self) -> str | None:
        return self._active

    def _routed(self, topic: str) -> bool:
        name = parse_topic(topic)
        return name is not None and name.family == self.family

    async def send_all(self, messages: Sequence[OutboundMessage]) -> list[str | None]:
        async with self._lock:
            if self._active is None:
                await self._refresh()
            active = self._active or self.configured_topic
            routed = [dataclasses.replace(m, topic=active) if self._routed(m.topic) else m for m in messages]
            return await self.sink.send_all(routed)

    async def _refresh(self) -> list[TopicVersion]:
        family = self.family
        versions = [] if family is None else await self.store.versions(family)
        active = active_topic(versions, self.configured_topic)
        if active != self._active:
            for version in versions:
                if version.topic == active:
                    self.sink.add_topic(version.topic, version.partitions)
            if self._active is not None:
                log.info("relay now writes %s", active)
            self._active = active
        return versions

    async def step(self) -> bool:
        """Carry out a requested switch, or finish one whose markers are not written yet. True if it did."""
        family = self.family
        if family is None:
            return False
        async with self._lock:
            versions = await self._refresh()
            plan = pending_switch(versions)
            if plan is not None:
                old, new = plan
                self.sink.add_topic(new.topic, new.partitions)
                # Database first: from this commit on, every relay (this one, or a standby taking
                # over) writes the new version, so the markers below are the last records of the old.
                await self.store.switch(family, old.version, new.version)
                versions = await self._refresh()
                log.info("switched the request topic from %s to %s", old.topic, new.topic)
            did = plan is not None
            active = next((v for v in versions if v.state is VersionState.ACTIVE), None)
            for version in versions:
                if version.state is VersionState.DRAINING and version.switched_at is None and active is not None:
                    failures = [f for f in await self.sink.send_all(switch_markers(version, active.topic)) if f]
                    if failures:
                        log.warning(
                            "switch markers for %s not acknowledged yet (will retry): %s", version.topic, failures[0]
                        )
                        continue
                    await self.store.markers_written(family, version.version)
                    log.info("wrote switch markers to the %d partition(s) of %s", version.partitions, version.topic)
                    did = True
            return did

    async def run(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        """Watch for switches while this relay is the active one."""
        while not stop.is_set():
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed(log, exc, "topic version step failed; retrying")
            if await sleep_unless(stop, interval_s):
                return


@dataclass(frozen=True, slots=True)
class _Marker:
    offset: int
    after: int  # the highest offset of this partition handed to the worker before the marker


@dataclass
class VersionedSource:
    """The worker's consumer, reading one topic version at a time (see the module docstring)."""

    inner: SubscribingSource
    store: TopicVersionStore
    configured_topic: str
    configured_partitions: int
    # Called with each topic the source starts reading (e.g. keep its dead-letter topic in existence).
    on_subscribe: Callable[[str], Awaitable[None]] | None = None
    refresh_s: float = 0.5
    _reading: str | None = None
    _next_refresh: float = 0.0
    _handed: dict[tuple[str, int], int] = field(default_factory=dict)
    _settled: dict[tuple[str, int], int] = field(default_factory=dict)
    _markers: dict[tuple[str, int], _Marker] = field(default_factory=dict)

    @property
    def reading(self) -> str | None:
        return self._reading

    async def _desired(self) -> tuple[str, int]:
        name = parse_topic(self.configured_topic)
        if name is None:
            return self.configured_topic, self.configured_partitions
        version = consumed_version(await self.store.versions(name.family))
        if version is None:
            return self.configured_topic, self.configured_partitions
        return version.topic, version.partitions

    async def start(self) -> None:
        await self._follow()

    async def _follow(self) -> None:
        self._next_refresh = time.monotonic() + self.refresh_s
        topic, partitions = await self._desired()
        if topic == self._reading:
            return
        if self.on_subscribe is not None:
            await self.on_subscribe(topic)
        await self.inner.subscribe({topic: partitions})
        if self._reading is not None:
            log.info("worker moves from %s to %s", self._reading, topic)
        self._reading = topic

    async def next_batch(self, max_records: int, timeout: float) -> list[InboundRecord]:
        if time.monotonic() >= self._next_refresh:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed(log, exc, "could not check the topic versions; still reading %s", self._reading)
        await self._settle_markers()
        records: list[InboundRecord] = []
        for record in await self.inner.next_batch(max_records, timeout):
            key = (record.topic, record.partition)
            if is_switch_marker(record):
                if key not in self._markers:
                    self._markers[key] = _Marker(record.offset, self._handed.get(key, -1))
                continue
            self._handed[key] = max(self._handed.get(key, -1), record.offset)
            records.append(record)
        if not records:
            await self._settle_markers()
        return records

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        await self.inner.commit(records)
        for record in records:
            key = (record.topic, record.partition)
            self._settled[key] = max(self._settled.get(key, -1), record.offset)
        await self._settle_markers()

    async def _settle_markers(self) -> None:
        """Commit past each marker whose predecessors are all committed, and record its partition drained."""
        for key, marker in list(self._markers.items()):
            if self._settled.get(key, -1) < marker.after:
                continue
            topic, partition = key
            name = parse_topic(topic)
            if name is None:
                del self._markers[key]
                continue
            await self.inner.commit([InboundRecord(topic, partition, marker.offset, None, None, {})])
            self._settled[key] = max(self._settled.get(key, -1), marker.offset)
            try:
                whole = await self.store.mark_drained(name.family, name.version, partition, marker.offset)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed(log, exc, "could not record %s[%d] drained; will retry", topic, partition)
                continue
            del self._markers[key]
            log.info("drained %s[%d] up to its switch marker at offset %d", topic, partition, marker.offset)
            if whole:
                log.info("every partition of %s is drained", topic)
                self._next_refresh = 0.0

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()


class MigrationRefused(Exception):
    """The requested migration cannot start (say why to the operator)."""


async def migrate_topic(
    store: TopicVersionStore,
    admin: TopicAdmin,
    configured_topic: str,
    to_version: int,
    partitions: int,
    *,
    default_partitions: int,
) -> TopicVersion:
    """Create ``<family>.v<to_version>`` (and its DLQ) with ``partitions`` partitions and ask the relay to switch.

    Idempotent: asking again for the same version and partition count returns it as it stands.
    """
    name = parse_topic(configured_topic)
    if name is None:
        raise MigrationRefused(f"topic {configured_topic!r} has no version suffix (.v1) to replace")
    versions = await store.versions(name.family)
    existing = next((v for v in versions if v.version == to_version), None)
    if existing is not None:
        if existing.partitions != partitions:
            raise MigrationRefused(f"{existing.topic} exists with {existing.partitions} partitions, not {partitions}")
        return existing
    current: TopicVersion | None = None
    if not versions:
        counted = await admin.partitions(configured_topic)
        current = TopicVersion(
            name.family, name.version, configured_topic, counted or default_partitions, VersionState.ACTIVE
        )
        versions = [current]
    newest = max(v.version for v in versions)
    if to_version <= newest:
        raise MigrationRefused(f"v{to_version} is not newer than v{newest}")
    busy = [v for v in versions if v.state in (VersionState.PENDING, VersionState.DRAINING)]
    if busy:
        raise MigrationRefused(f"{busy[0].topic} is still {busy[0].state.value}: one migration at a time")
    topic = versioned(name.family, to_version)
    await admin.create({topic: partitions, dlq_topic(topic): 1})
    new = TopicVersion(name.family, to_version, topic, partitions, VersionState.PENDING)
    await store.request(current, new)
    return new


async def retire_drained(
    store: TopicVersionStore, admin: TopicAdmin, family: str, *, delete_topics: bool
) -> list[TopicVersion]:
    """Retire every DRAINED version (optionally deleting its topic; its DLQ is kept). Returns those retired."""
    retired = [v for v in await store.versions(family) if v.state is VersionState.DRAINED]
    for version in retired:
        await store.retire(family, version.version)
        if delete_topics:
            await admin.delete(version.topic)
    return retired


def family_of(configured_topic: str) -> str:
    name = parse_topic(configured_topic)
    if name is None:
        raise MigrationRefused(f"topic {configured_topic!r} has no version suffix (.v1)")
    return name.family


def describe(versions: Sequence[TopicVersion]) -> Mapping[str, str]:
    """Which topic the relay writes and which the worker reads, for ``topics status``."""
    reading = consumed_version(list(versions))
    return {
        "relay writes": active_topic(list(versions), "(configured topic)"),
        "worker reads": reading.topic if reading else "(configured topic)",
    }
