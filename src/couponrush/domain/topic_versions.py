"""Versioned topics: a topic's partition count is fixed once keys map to partitions, so a new count
means a new topic (``<family>.v2``), and requests move over to it without losing order.

A version goes PENDING (asked for) -> ACTIVE (the relay writes it) -> DRAINING (the relay switched
away; the worker still reads it) -> DRAINED (every partition consumed past its switch marker) ->
RETIRED (no longer read; its topic may be deleted). Pure: no I/O here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

_VERSIONED = re.compile(r"^(?P<family>.+)\.v(?P<version>[1-9][0-9]*)$")

# Headers of the marker record the relay writes to every partition of the version it leaves.
SWITCH_MARKER_TYPE = "topic.switched"
EVENT_TYPE_HEADER = "event-type"


class VersionState(enum.StrEnum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    DRAINING = "DRAINING"
    DRAINED = "DRAINED"
    RETIRED = "RETIRED"


@dataclass(frozen=True, slots=True)
class TopicName:
    family: str
    version: int

    @property
    def name(self) -> str:
        return versioned(self.family, self.version)


def parse_topic(topic: str) -> TopicName | None:
    """``a.b.v3`` -> (``a.b``, 3); None when the name carries no version suffix."""
    match = _VERSIONED.match(topic)
    if match is None:
        return None
    return TopicName(match.group("family"), int(match.group("version")))


def versioned(family: str, version: int) -> str:
    return f"{family}.v{version}"


def parse_version(text: str) -> int:
    """``v2`` or ``2`` -> 2."""
    raw = text[1:] if text[:1] in ("v", "V") else text
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"a topic version looks like v2, got {text!r}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class TopicVersion:
    family: str
    version: int
    topic: str
    partitions: int
    state: VersionState
    created_at: datetime | None = None
    activated_at: datetime | None = None
    switched_at: datetime | None = None
    drained_at: datetime | None = None
    retired_at: datetime | None = None
    drained_partitions: int = 0


def active_topic(versions: list[TopicVersion], default: str) -> str:
    """The topic the relay writes: the ACTIVE version, or the configured topic before any migration."""
    for version in versions:
        if version.state is VersionState.ACTIVE:
            return version.topic
    return default


def consumed_version(versions: list[TopicVersion]) -> TopicVersion | None:
    """The one version the worker reads: the oldest still DRAINING, else the ACTIVE one.

    Reading a newer version only once the older one is drained is what keeps each coupon's requests
    in arrival order across a switch (a coupon's key maps to different partitions in each version).
    """
    live = [v for v in versions if v.state in (VersionState.DRAINING, VersionState.ACTIVE)]
    return min(live, key=lambda v: v.version) if live else None


def pending_switch(versions: list[TopicVersion]) -> tuple[TopicVersion, TopicVersion] | None:
    """(the ACTIVE version, the PENDING one) when a switch was asked for, else None."""
    active = next((v for v in versions if v.state is VersionState.ACTIVE), None)
    pending = next((v for v in versions if v.state is VersionState.PENDING), None)
    if active is None or pending is None:
        return None
    return active, pending


def dlq_topic(topic: str) -> str:
    """The dead-letter topic that parks what could not be processed from ``topic``."""
    return f"{topic}.dlq"
