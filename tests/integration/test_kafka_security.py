"""Kafka as production runs it, against the real embedded broker: TLS, SASL, verify mode, quiet failures.

TLS: Tansu 0.6.0 cannot serve TLS itself (see tests/support/tls.py), so a TLS-terminating proxy on
127.0.0.1 stands in front of a plaintext Tansu that advertises the proxy: every connection of the
service's clients goes through a real handshake, with the server certificate checked against the
configured CA and the client presenting its certificate (encrypted key), which the proxy requires.

SASL: Tansu with ``--authentication`` offers SCRAM-SHA-256 only, and keeps users in its storage; with
the in-memory storage no user can be created while authentication is on (creating one needs a login),
so only the refusal of a login can be tested here, not a successful one.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from couponrush import bootstrap
from couponrush.adapters.kafka_topics import TopicPolicy, TopicsNotReady, ensure_topics
from couponrush.adapters.probes import KafkaProbe
from couponrush.config import Settings
from couponrush.dev.broker import EmbeddedBroker, free_port
from couponrush.service.ports import OutboundMessage
from tests.support.kafka import read_records
from tests.support.tls import Certificates, TlsProxy, make_certificates

LIBRDKAFKA = "couponrush.kafka.librdkafka"
PASSWORD = "wrong-password-never-logged"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_proxy(certificates: Certificates) -> Iterator[TlsProxy]:
    """A plaintext Tansu reachable only through TLS (client certificate required)."""
    proxy_port = free_port()
    broker = EmbeddedBroker(port=free_port(), advertised_port=proxy_port)
    broker.start()
    proxy = TlsProxy(
        upstream_port=broker.port, port=proxy_port, certificates=certificates, require_client_certificate=True
    )
    proxy.start()
    yield proxy
    proxy.stop()
    broker.stop()


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(port=free_port(), authentication=True)
    broker.start()
    yield broker
    broker.stop()


def kafka_settings(bootstrap_servers: str, topic_prefix: str, **kafka: Any) -> Settings:
    return Settings(
        kafka_bootstrap_servers=bootstrap_servers,
        publish_requested_topic=topic_prefix + "outside.coupon.publish.requested.v1",
        published_topic=topic_prefix + "outside.coupon.published.v1",
        consumer_group=topic_prefix + "coupon",
        **kafka,
    )


def tls(certificates: Certificates, ca: Path | None = None) -> dict[str, Any]:
    return {
        "kafka_security_protocol": "SSL",
        "kafka_ssl_ca_file": ca or certificates.ca,
        "kafka_ssl_cert_file": certificates.client_cert,
        "kafka_ssl_key_file": certificates.client_key,
        "kafka_ssl_key_password": certificates.client_key_password,
    }


def librdkafka_lines(caplog: pytest.LogCaptureFixture, containing: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LIBRDKAFKA and containing in r.getMessage()]


async def test_the_relay_sink_and_the_worker_source_produce_and_consume_over_tls(
    tls_proxy: TlsProxy, certificates: Certificates, topic_prefix: str
) -> None:
    settings = kafka_settings(tls_proxy.bootstrap, topic_prefix, **tls(certificates))
    assert await KafkaProbe(settings.kafka_bootstrap_servers, options=bootstrap.kafka_options(settings)).check() == "UP"
    sink, source = bootstrap.relay_sink(settings), bootstrap.worker_source(settings)
    topic = settings.publish_requested_topic
    messages = [OutboundMessage(topic, str(n % 3), f"m{n}".encode(), {"request-id": f"r{n}"}) for n in range(10)]
    try:
        assert await sink.send_all(messages) == [None] * 10
        await source.start()
        records = await read_records(source, 10)
    finally:
        await sink.close()
        await source.close()
    assert sorted(r.value or b"" for r in records) == sorted(m.payload for m in messages)
    assert {r.headers["request-id"] for r in records} == {f"r{n}".encode() for n in range(10)}


async def test_a_wrong_ca_fails_readiness_and_sends_in_one_clear_line(
    tls_proxy: TlsProxy, certificates: Certificates, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = kafka_settings(
        tls_proxy.bootstrap, topic_prefix, kafka_message_timeout_ms=2000, **tls(certificates, certificates.other_ca)
    )
    probe = KafkaProbe(settings.kafka_bootstrap_servers, timeout_s=1.0, options=bootstrap.kafka_options(settings))
    answers = [await probe.check() for _ in range(3)]
    sink = bootstrap.relay_sink(settings)
    try:
        failures = await sink.send_all([OutboundMessage(settings.publish_requested_topic, "1", b"x", {})])
    finally:
        await sink.close()

    expected = "TLS failed: error:0A000086:SSL routines::certificate verify failed"
    hint = "(is COUPONRUSH_KAFKA_SSL_CA_FILE the CA that signed the broker's certificate?)"
    for answer in answers:
        assert answer.startswith(f"DOWN: {expected}"), answer
        assert answer.endswith(hint)
    [failure] = failures
    assert failure is not None
    assert failure.startswith(f"broker unavailable: {expected}")
    # librdkafka retried the handshake dozens of times over two clients (~56 lines a check before);
    # each of its distinct lines was written once.
    assert len(librdkafka_lines(caplog, "SSL handshake failed: error:0A000086")) == 1
    assert len([r for r in caplog.records if r.name == LIBRDKAFKA]) <= 4


async def test_without_the_client_certificate_the_server_requires_the_cluster_is_down(
    tls_proxy: TlsProxy, certificates: Certificates, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = kafka_settings(
        tls_proxy.bootstrap, topic_prefix, kafka_security_protocol="SSL", kafka_ssl_ca_file=certificates.ca
    )
    probe = KafkaProbe(settings.kafka_bootstrap_servers, timeout_s=1.0, options=bootstrap.kafka_options(settings))
    assert (await probe.check()).startswith("DOWN: ")
    # With TLS 1.3 the refusal arrives after the handshake, as a closed connection: librdkafka reports no
    # error beyond "brokers are down", so the reason is only in its own line, written once.
    assert len(librdkafka_lines(caplog, "SSL connection closed by peer")) == 1


@pytest.mark.parametrize("through_tls", [False, True], ids=["SASL_PLAINTEXT", "SASL_SSL"])
async def test_a_login_the_broker_refuses_fails_in_one_clear_line_without_the_password(
    sasl_broker: EmbeddedBroker,
    certificates: Certificates,
    topic_prefix: str,
    caplog: pytest.LogCaptureFixture,
    through_tls: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy: TlsProxy | None = None
    address = sasl_broker.bootstrap
    security: dict[str, Any] = {"kafka_security_protocol": "SASL_PLAINTEXT"}
    if through_tls:
        # The SASL broker advertises itself, so only the bootstrap connection can go through the proxy:
        # enough for the TLS handshake and the SASL exchange over it to be exercised.
        proxy = TlsProxy(upstream_port=sasl_broker.port, port=free_port(), certificates=certificates)
        proxy.start()
        address = proxy.bootstrap
        security = {"kafka_security_protocol": "SASL_SSL", "kafka_ssl_ca_file": certificates.ca}
    settings = kafka_settings(
        address,
        topic_prefix,
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="couponrush",
        kafka_sasl_password=PASSWORD,
        **security,
    )
    try:
        probe = KafkaProbe(settings.kafka_bootstrap_servers, timeout_s=1.0, options=bootstrap.kafka_options(settings))
        answers = [await probe.check() for _ in range(2)]
    finally:
        if proxy is not None:
            proxy.stop()
    for answer in answers:
        assert answer == (
            "DOWN: authentication failed: SASL authentication error: SASL SCRAM authentication failed: broker "
            "responded with unknown-user (check COUPONRUSH_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD)"
        )
    assert len(librdkafka_lines(caplog, "SASL authentication error")) == 1
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


async def test_a_closed_port_no_longer_floods_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    probe = KafkaProbe(f"127.0.0.1:{free_port()}", timeout_s=1.0)
    answers = [await probe.check() for _ in range(2)]
    assert all(a.startswith("DOWN: Connect to ipv4#127.0.0.1:") and "Connection refused" in a for a in answers), answers
    assert "|FAIL|rdkafka" not in capfd.readouterr().err  # librdkafka's raw lines (56 per check before)


def partitions_and_min_insync(bootstrap_servers: str, topic: str) -> tuple[int, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    partitions = len(admin.list_topics(timeout=10).topics[topic].partitions)
    [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return partitions, future.result(10)["min.insync.replicas"].value


async def test_create_mode_sets_min_insync_replicas_and_verify_mode_names_what_is_wrong(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    requests, dlq = topic_prefix + "requests.v1", topic_prefix + "requests.v1.dlq"
    created = ensure_topics(broker.bootstrap, {requests: 3}, policy=TopicPolicy(min_insync_replicas=2))
    assert created == [requests]
    assert partitions_and_min_insync(broker.bootstrap, requests) == (3, "2")

    verify = TopicPolicy(mode="verify")
    assert ensure_topics(broker.bootstrap, {requests: 3}, policy=verify) == []
    with pytest.raises(TopicsNotReady) as missing:
        ensure_topics(broker.bootstrap, {requests: 3, dlq: 1}, policy=verify)
    assert str(missing.value) == (
        f"topic {dlq} does not exist (or this principal may not describe it); "
        "COUPONRUSH_KAFKA_TOPICS=verify creates nothing: create it with 1 partition(s)"
    )
    with pytest.raises(TopicsNotReady, match=f"^topic {requests} has 3 partition\\(s\\), expected 6$"):
        ensure_topics(broker.bootstrap, {requests: 6}, policy=verify)
    assert dlq not in AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics


@pytest.mark.parametrize("role", ["relay", "worker"])
async def test_in_verify_mode_a_role_refuses_to_start_with_one_line_naming_the_topic(
    broker: EmbeddedBroker, topic_prefix: str, role: str
) -> None:
    requests = topic_prefix + "outside.coupon.publish.requested.v1"
    ensure_topics(broker.bootstrap, {requests: 2})  # the configuration says 3
    env = {
        "PATH": "/usr/bin:/bin",
        "COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "COUPONRUSH_KAFKA_TOPICS": "verify",
        "COUPONRUSH_PUBLISH_REQUESTED_TOPIC": requests,
        "COUPONRUSH_PUBLISHED_TOPIC": topic_prefix + "outside.coupon.published.v1",
        "COUPONRUSH_CONSUMER_GROUP": topic_prefix + "coupon",
        "COUPONRUSH_LOG_FORMAT": "json",
        # Unreachable on purpose: the refusal comes before any database or Redis connection.
        "COUPONRUSH_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        "COUPONRUSH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "couponrush", role, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, (out, err)
    errors = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: Kafka at {broker.bootstrap} (COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS): "
        f"topic {requests} has 2 partition(s), expected 3"
        + (
            f"; topic {topic_prefix}outside.coupon.published.v1 does not exist (or this principal may not describe "
            "it); COUPONRUSH_KAFKA_TOPICS=verify creates nothing: create it with 3 partition(s)"
            if role == "relay"
            else f"; topic {requests}.dlq does not exist (or this principal may not describe it); "
            "COUPONRUSH_KAFKA_TOPICS=verify creates nothing: create it with 1 partition(s)"
        )
    ]
