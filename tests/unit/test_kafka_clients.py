"""librdkafka's lines rate-limited, its errors told in one line, and verify mode's verdict on topics (no broker)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ClusterMetadata, PartitionMetadata, TopicMetadata  # type: ignore[attr-defined]

from couponrush.adapters.kafka_clients import (
    ClientErrors,
    KafkaClientOptions,
    KafkaUnavailable,
    RepeatFilter,
    explain,
    librdkafka_logger,
)
from couponrush.adapters.kafka_topics import topic_problems
from couponrush.adapters.probes import KafkaProbe

REFUSED = "FAIL [rdkafka#producer-{n}] [thrd:127.0.0.1:9/bootstrap]: 127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after {ms}ms in state CONNECT)"  # noqa: E501


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("couponrush.adapters.kafka_clients.time.monotonic", clock)
    return clock


class Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[list[logging.LogRecord]]:
    """What librdkafka's logger lets through, through a fresh filter (a handler of our own collects)."""
    records: list[logging.LogRecord] = []
    handler = Collect(records)
    logger = logging.getLogger("couponrush.kafka.librdkafka")
    kept = list(logger.filters)
    for old in kept:
        logger.removeFilter(old)
    librdkafka_logger(10.0)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)
    for new in list(logger.filters):
        logger.removeFilter(new)
    for old in kept:
        logger.addFilter(old)


def test_the_same_line_passes_once_per_window_and_the_next_one_counts_the_suppressed(
    clock: Clock, captured: list[logging.LogRecord]
) -> None:
    logger = librdkafka_logger(10.0)
    [repeat] = [f for f in logger.filters if isinstance(f, RepeatFilter)]
    before = repeat.suppressed_total
    for n in range(56):  # what one readiness check against a closed port used to print
        logger.error("%s", REFUSED.format(n=n % 3, ms=n % 2))
        clock.now += 0.05
    logger.error("%s", "FAIL [rdkafka#producer-1] other: SSL handshake failed")
    assert [r.getMessage() for r in captured] == [
        REFUSED.format(n=0, ms=0),
        "FAIL [rdkafka#producer-1] other: SSL handshake failed",
    ]
    assert repeat.suppressed_total - before == 55

    clock.now += 10
    logger.error("%s", REFUSED.format(n=7, ms=3))
    assert captured[-1].getMessage() == REFUSED.format(n=7, ms=3) + " (55 more like it suppressed since the last one)"
    assert getattr(captured[-1], "suppressed", None) == 55  # a field of its own in the JSON log line


def test_a_window_of_zero_lets_everything_through() -> None:
    repeat = RepeatFilter(0)
    record = logging.LogRecord("x", logging.ERROR, "", 0, "same", None, None)
    assert all(repeat.filter(record) for _ in range(5))


def test_the_filter_forgets_the_oldest_messages_beyond_its_bound(clock: Clock) -> None:
    repeat = RepeatFilter(60, max_messages=2)
    records = [logging.LogRecord("x", logging.ERROR, "", 0, text, None, None) for text in ("a", "b", "c")]
    assert all(repeat.filter(r) for r in records)
    assert repeat.filter(records[0])  # "a" was forgotten to keep at most 2
    assert not repeat.filter(records[2])


def error(code: int, text: str) -> KafkaError:
    return KafkaError(code, text)


def test_a_tls_failure_is_told_in_one_line_naming_the_setting_to_check() -> None:
    tls = error(
        KafkaError._SSL,
        "ssl://127.0.0.1:4000/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify "
        "failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or "
        "root CA certificates are installed (install ca-certificates package) (after 1ms in state SSL_HANDSHAKE)",
    )
    line = explain(tls)
    assert line.startswith("TLS failed: error:0A000086:SSL routines::certificate verify failed: broker certificate")
    assert line.endswith("(is COUPONRUSH_KAFKA_SSL_CA_FILE the CA that signed the broker's certificate?)")
    assert "after 1ms" not in line
    assert "\n" not in line


def test_the_most_telling_error_wins_over_a_later_summary() -> None:
    errors = ClientErrors()
    generic = KafkaException(error(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure"))
    assert errors.unavailable(generic) is generic  # nothing better known
    errors(error(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert errors.unavailable(generic) is generic
    errors(
        error(
            KafkaError._AUTHENTICATION,
            "sasl_plaintext://127.0.0.1:4000/bootstrap: SASL authentication error: SASL SCRAM authentication "
            "failed: broker responded with unknown-user (after 16ms in state AUTH_REQ)",
        )
    )
    errors(error(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    told = errors.unavailable(generic)
    assert isinstance(told, KafkaUnavailable)
    assert isinstance(told, KafkaException)  # retried wherever an unreachable broker is
    assert str(told) == (
        "authentication failed: SASL authentication error: SASL SCRAM authentication failed: broker responded "
        "with unknown-user (check COUPONRUSH_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD)"
    )


def metadata(**topics: int) -> ClusterMetadata:
    cluster = ClusterMetadata()
    for name, partitions in topics.items():
        topic = TopicMetadata()
        topic.topic = name
        topic.partitions = {p: PartitionMetadata() for p in range(partitions)}
        cluster.topics[name] = topic
    return cluster


def test_verify_mode_accepts_topics_that_exist_with_the_expected_partitions() -> None:
    assert topic_problems(metadata(requests=3, published=3), {"requests": 3, "published": 3}) == []


def test_verify_mode_names_a_missing_topic_and_a_wrong_partition_count() -> None:
    problems = topic_problems(metadata(requests=4), {"requests": 3, "requests.dlq": 1})
    assert problems == [
        "topic requests has 4 partition(s), expected 3",
        "topic requests.dlq does not exist (or this principal may not describe it); "
        "COUPONRUSH_KAFKA_TOPICS=verify creates nothing: create it with 1 partition(s)",
    ]


def test_verify_mode_reports_a_topic_the_cluster_answers_with_an_error() -> None:
    cluster = metadata(requests=3)
    cluster.topics["requests"].error = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    [problem] = topic_problems(cluster, {"requests": 3})
    assert problem.startswith("topic requests: ")
    assert "authoriz" in problem.lower()


async def test_a_probe_whose_settings_librdkafka_refuses_says_so_in_one_line() -> None:
    probe = KafkaProbe("127.0.0.1:9", options=KafkaClientOptions({"lingr.ms": 5}))
    assert await probe.check() == 'DOWN: No such configuration property: "lingr.ms"'
