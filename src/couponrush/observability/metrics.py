"""Every Prometheus metric couponrush exposes, in one place (names are a contract: see README).

Several API worker processes (``couponrush api --workers N``) are summed with prometheus_client's
multiprocess mode: ``couponrush api`` creates a fresh ``PROMETHEUS_MULTIPROC_DIR`` for the run before
any worker imports this module, and removes it when the API stops. Relay and worker are single
processes and use the default registry (or the multiprocess directory too, if one is set).

Values that live in the database (outbox backlog, per-coupon stock) are not counted here: they are
read at scrape time (``database_families``), so every process reports the same truth.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from couponrush.service.ports import CouponProgress, OutboxState, Undecided

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_PIPELINE = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# --- API ---------------------------------------------------------------------------------------
PUBLISH_REQUESTS = Counter(
    "couponrush_publish_requests_total",
    "Answers to POST /api/v1/users/{userId}/coupons/publish, by outcome "
    "(accepted, refused, unavailable, invalid) and reason (OK, SOLD_OUT, ALREADY_REQUESTED, ...)",
    ["outcome", "reason"],
)
GATE_ADMIT_SECONDS = Histogram(
    "couponrush_gate_admit_seconds",
    "Time of one admission check at the Redis gate, by the gate's verdict",
    ["verdict"],
    buckets=_FAST,
)
HTTP_REQUESTS = Counter(
    "couponrush_http_requests_total",
    "HTTP requests answered, by route template and status",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "couponrush_http_request_duration_seconds", "HTTP request duration", ["method", "route"], buckets=_FAST
)
WAITING_CLIENTS = Gauge(
    "couponrush_waiting_clients",
    "HTTP requests waiting for a request's outcome, by kind (long poll: ?wait=N; stream: .../request/events)",
    ["kind"],
    multiprocess_mode="livesum",
)

# --- relay -------------------------------------------------------------------------------------
RELAY_SENT = Counter("couponrush_relay_sent_total", "Outbox rows sent and acknowledged by the broker", ["topic"])
RELAY_FAILED = Counter(
    "couponrush_relay_send_failures_total", "Outbox rows the broker did not acknowledge (retried)", ["topic"]
)
RELAY_SEND_SECONDS = Histogram(
    "couponrush_relay_send_seconds", "Time to send one relay batch and await every acknowledgement", buckets=_PIPELINE
)

# --- worker ------------------------------------------------------------------------------------
ISSUE_BATCH_SIZE = Histogram(
    "couponrush_issue_batch_size",
    "Records in one consumed batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
ISSUE_BATCH_SECONDS = Histogram(
    "couponrush_issue_batch_seconds", "Time from receiving a batch to committing its offsets", buckets=_PIPELINE
)
TIME_TO_ISSUE_SECONDS = Histogram(
    "couponrush_time_to_issue_seconds",
    "From the request being accepted by the API to its issue being committed in PostgreSQL",
    buckets=_PIPELINE,
)
ISSUE_DECISIONS = Counter(
    "couponrush_issue_decisions_total",
    "Requests decided by the worker (first decision only, not replays), by status and reason",
    ["status", "reason"],
)
CONSUMER_LAG = Gauge(
    "couponrush_consumer_lag",
    "Records not yet committed by this worker, per assigned partition (fetch-reported high watermark)",
    ["topic", "partition"],
    multiprocess_mode="livemax",
)
DEAD_LETTERS = Counter("couponrush_dead_letters_total", "Records parked on a dead-letter topic", ["reason"])

# --- reconciliation (incremented by the reconciler) ---------------------------------------------
RECONCILE_REPAIRS = Counter(
    "couponrush_reconcile_repairs_total",
    "Inconsistencies the reconciler found and repaired, by kind of repair",
    ["kind"],
)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class _Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return list(self._families)


class _Delegate(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def render(extra: Sequence[Metric] = ()) -> bytes:
    """The exposition text: this process's (or every API worker's) metrics, plus ``extra`` families."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Delegate(REGISTRY))
    if extra:
        registry.register(_Families(extra))
    return generate_latest(registry)


def database_families(
    outbox: OutboxState, coupons: Sequence[CouponProgress], undecided: Undecided | None = None
) -> list[Metric]:
    """Gauges read from PostgreSQL at scrape time."""
    backlog = GaugeMetricFamily("couponrush_outbox_backlog", "Outbox rows not yet acknowledged by the broker")
    backlog.add_metric([], outbox.backlog)
    age = GaugeMetricFamily(
        "couponrush_outbox_oldest_age_seconds", "Age of the oldest outbox row not yet sent (0 when none)"
    )
    age.add_metric([], outbox.oldest_age_s)
    remaining = GaugeMetricFamily(
        "couponrush_coupon_remaining", "Units not yet issued (quantity - issued), per open coupon", labels=["coupon_id"]
    )
    pending = GaugeMetricFamily(
        "couponrush_coupon_pending", "Accepted requests not yet decided, per open coupon", labels=["coupon_id"]
    )
    available = GaugeMetricFamily(
        "couponrush_coupon_available",
        "Units a request can still get (quantity - issued - pending: the live view's stock bar), per open coupon",
        labels=["coupon_id"],
    )
    for coupon in coupons:
        remaining.add_metric([str(coupon.coupon_id)], coupon.quantity - coupon.issued)
        pending.add_metric([str(coupon.coupon_id)], coupon.pending)
        available.add_metric([str(coupon.coupon_id)], max(0, coupon.quantity - coupon.issued - coupon.pending))
    oldest = GaugeMetricFamily(
        "couponrush_oldest_undecided_seconds",
        "Age of the oldest accepted request not yet issued or refused (0 when none; dead letters aside)",
    )
    oldest.add_metric([], undecided.age_s if undecided is not None else 0.0)
    return [backlog, age, remaining, pending, available, oldest]


def set_consumer_lag(lag: dict[tuple[str, int], int]) -> None:
    """Replace the lag series with ``lag`` (partitions no longer assigned disappear)."""
    CONSUMER_LAG.clear()
    for (topic, partition), value in lag.items():
        CONSUMER_LAG.labels(topic, str(partition)).set(value)


class Tally:
    """Counts and timings of the hot path, added to the metrics above once per ``every_s``, not per request.

    In multiprocess mode (the API) each ``inc`` or ``observe`` writes a memory-mapped file under a lock:
    several per request cost more than the request's own work once refusals are answered in-process.
    Counts are summed, and timings sorted into their histogram's buckets, then written in one go (at the
    latest ``every_s`` later, and at every scrape of this process).
    """

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s = every_s
        self._counts: dict[Any, float] = {}
        self._timings: dict[Any, list[float]] = {}
        self._scheduled = False

    def count(self, child: Any, amount: float = 1.0) -> None:
        """``child``: a labelled counter (``COUNTER.labels(...)``), kept by the caller."""
        self._counts[child] = self._counts.get(child, 0.0) + amount
        self._schedule()

    def observe(self, child: Any, seconds: float) -> None:
        """``child``: a labelled histogram."""
        timings = self._timings.get(child)
        if timings is None:
            timings = self._timings[child] = []
        timings.append(seconds)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_later(self.every_s, self.flush)
            except RuntimeError:  # no loop: write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        counts, self._counts = self._counts, {}
        timings, self._timings = self._timings, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, values in timings.items():
            _observe_many(child, values)


def _observe_many(child: Any, values: list[float]) -> None:
    """``child.observe(v)`` for every value, writing each bucket and the sum once.

    prometheus_client's Histogram keeps ``_upper_bounds``, ``_buckets`` (one value per bucket, counting
    observations that fall in it) and ``_sum``; ``observe`` adds to one bucket and the sum. This does the
    same for a whole list. Checked against ``observe`` by a unit test.
    """
    bounds = child._upper_bounds
    per_bucket = [0] * len(bounds)
    for value in values:
        per_bucket[bisect.bisect_left(bounds, value)] += 1
    child._sum.inc(sum(values))
    for index, n in enumerate(per_bucket):
        if n:
            child._buckets[index].inc(n)


TALLY = Tally()


def cumulative_buckets(histogram: str, **labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram of this process, or of every API worker process, summed
    over the series whose labels include ``labels``; what a quantile over a time window is computed from."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Delegate(REGISTRY))
    totals: dict[float, float] = {}
    for family in registry.collect():
        if family.name != histogram:
            continue
        for sample in family.samples:
            if sample.name == f"{histogram}_bucket" and all(sample.labels.get(k) == v for k, v in labels.items()):
                bound = float(sample.labels["le"])
                totals[bound] = totals.get(bound, 0.0) + sample.value
    return sorted(totals.items())
