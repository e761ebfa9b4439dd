"""Kafka connection settings: what each one becomes in librdkafka, what is refused, and that secrets stay secret."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from couponrush import bootstrap
from couponrush.adapters.kafka import consumer_config, producer_config
from couponrush.adapters.kafka_clients import PLAINTEXT, check_client_options, client_config, kafka_client_options
from couponrush.adapters.kafka_topics import topic_policy
from couponrush.config import RESERVED_KAFKA_PROPERTIES, ConfigurationError, Settings, load_settings

PASSWORD = "pw-that-must-never-show"
KEY_PASSWORD = "key-pw-that-must-never-show"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what each test sets: no COUPONRUSH_KAFKA_* from the machine."""
    import os

    for name in list(os.environ):
        if name.startswith("COUPONRUSH_") and not name.startswith("COUPONRUSH_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("not checked by the settings, only that it exists\n")
    return path


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"COUPONRUSH_{name}", value)
    return load_settings()


def refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        load(monkeypatch, **env)
    return caught.value.lines


def test_by_default_clients_speak_plaintext_and_create_their_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch)
    assert kafka_client_options(settings).properties == {"security.protocol": "PLAINTEXT"}
    assert settings.kafka_topics == "create"
    assert settings.kafka_min_insync_replicas is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_each_sasl_protocol_and_mechanism_becomes_the_librdkafka_properties(
    monkeypatch: pytest.MonkeyPatch, protocol: str, mechanism: str
) -> None:
    settings = load(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL=protocol.lower(),  # case does not matter
        KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME="couponrush",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    assert kafka_client_options(settings).properties == {
        "security.protocol": protocol,
        "sasl.mechanism": mechanism,
        "sasl.username": "couponrush",
        "sasl.password": PASSWORD,
    }


def test_tls_with_a_ca_and_a_client_certificate_with_an_encrypted_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pem: Path
) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("x")
    key.write_text("x")
    settings = load(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CA_FILE=str(pem),
        KAFKA_SSL_CERT_FILE=str(cert),
        KAFKA_SSL_KEY_FILE=str(key),
        KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
    )
    assert kafka_client_options(settings).properties == {
        "security.protocol": "SSL",
        "ssl.ca.location": str(pem),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": KEY_PASSWORD,
    }


def test_tls_without_a_ca_file_uses_the_system_trust_store(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL")
    assert kafka_client_options(settings).properties == {"security.protocol": "SSL"}


def test_passwords_can_come_from_files_named_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pem: Path
) -> None:
    secret, key_secret, cert, key = (tmp_path / n for n in ("sasl", "keypw", "c.pem", "k.pem"))
    secret.write_text(PASSWORD + "\n")  # as `echo` or a mounted secret leaves it
    key_secret.write_text(KEY_PASSWORD)
    cert.write_text("x")
    key.write_text("x")
    settings = load(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="couponrush",
        KAFKA_SASL_PASSWORD_FILE=str(secret),
        KAFKA_SSL_CA_FILE=str(pem),
        KAFKA_SSL_CERT_FILE=str(cert),
        KAFKA_SSL_KEY_FILE=str(key),
        KAFKA_SSL_KEY_PASSWORD_FILE=str(key_secret),
    )
    properties = kafka_client_options(settings).properties
    assert properties["sasl.password"] == PASSWORD
    assert properties["ssl.key.password"] == KEY_PASSWORD


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": PASSWORD},
            "COUPONRUSH_KAFKA_SASL_MECHANISM is required with SASL_SSL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u"},
            "COUPONRUSH_KAFKA_SASL_PASSWORD is required with SASL_PLAINTEXT",
        ),
        (
            {"KAFKA_SASL_USERNAME": "u"},
            "COUPONRUSH_KAFKA_SASL_USERNAME is set, but COUPONRUSH_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SSL_CA_FILE": "/etc/hostname"},
            "COUPONRUSH_KAFKA_SSL_CA_FILE is set, but COUPONRUSH_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT "
            "does not use TLS",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
            "COUPONRUSH_KAFKA_SSL_CA_FILE=/nonexistent/ca.pem: no such file",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": "/etc/hostname"},
            "COUPONRUSH_KAFKA_SSL_CERT_FILE and COUPONRUSH_KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD},
            "COUPONRUSH_KAFKA_SSL_KEY_PASSWORD is set without COUPONRUSH_KAFKA_SSL_KEY_FILE",
        ),
        (
            {"KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SASL_PASSWORD_FILE": "/etc/hostname"},
            "set COUPONRUSH_KAFKA_SASL_PASSWORD or COUPONRUSH_KAFKA_SASL_PASSWORD_FILE, not both",
        ),
        (
            {"KAFKA_SASL_PASSWORD_FILE": "/nonexistent/secret"},
            "COUPONRUSH_KAFKA_SASL_PASSWORD_FILE=/nonexistent/secret: cannot read it (No such file or directory)",
        ),
    ],
)
def test_an_incomplete_or_contradictory_security_setting_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    lines = refused(monkeypatch, **env)
    assert expected in lines
    assert not any(PASSWORD in line or KEY_PASSWORD in line for line in lines)


def test_unknown_protocols_and_mechanisms_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    [line] = refused(monkeypatch, KAFKA_SECURITY_PROTOCOL="TLS")
    assert line.startswith("COUPONRUSH_KAFKA_SECURITY_PROTOCOL=TLS: Input should be 'PLAINTEXT', 'SSL'")
    lines = refused(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="GSSAPI",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    assert lines[0].startswith("COUPONRUSH_KAFKA_SASL_MECHANISM=GSSAPI: Input should be 'PLAIN'")


def test_other_librdkafka_properties_pass_through_and_may_tune_what_the_service_only_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load(
        monkeypatch, KAFKA_EXTRA='{"client.id": "couponrush-prod", "linger.ms": 10, "socket.keepalive.enable": true}'
    )
    options = kafka_client_options(settings)
    producer = producer_config("k:9092", message_timeout_ms=10_000, options=options)
    assert (producer["client.id"], producer["linger.ms"], producer["socket.keepalive.enable"]) == (
        "couponrush-prod",
        10,
        True,
    )
    assert (producer["acks"], producer["enable.idempotence"]) == ("all", True)
    assert producer["partitioner"] == "murmur2_random"
    consumer = consumer_config(
        "k:9092", "g", session_timeout_ms=6000, heartbeat_interval_ms=1000, fetch_wait_max_ms=100, options=options
    )
    assert consumer["client.id"] == "couponrush-prod"
    assert consumer["enable.auto.commit"] is False
    assert check_client_options(options) is None


@pytest.mark.parametrize("name", sorted(RESERVED_KAFKA_PROPERTIES))
def test_the_pass_through_cannot_override_what_the_service_depends_on(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    [line] = refused(monkeypatch, KAFKA_EXTRA=f'{{"{name}": "{PASSWORD}"}}')
    assert line == f"COUPONRUSH_KAFKA_EXTRA: {name!r} cannot be set here: {RESERVED_KAFKA_PROPERTIES[name]}"
    assert PASSWORD not in line


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"linger.ms": ', "COUPONRUSH_KAFKA_EXTRA: not valid JSON"),
        ('["linger.ms", 5]', "COUPONRUSH_KAFKA_EXTRA: must be a JSON object of librdkafka properties"),
        ('{"error_cb": "x"}', "COUPONRUSH_KAFKA_EXTRA: 'error_cb' is a callback, not a configuration property"),
        ('{"linger.ms": [1]}', "COUPONRUSH_KAFKA_EXTRA: "),
    ],
)
def test_a_malformed_pass_through_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    lines = refused(monkeypatch, KAFKA_EXTRA=value)
    assert lines[0].startswith(expected), lines
    assert all(value not in line for line in lines)


def test_librdkafka_itself_refuses_an_unknown_property_before_any_client_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load(monkeypatch, KAFKA_EXTRA='{"lingr.ms": 5}')
    assert bootstrap.kafka_configuration_problem(settings) == (
        'librdkafka refuses the Kafka client settings: No such configuration property: "lingr.ms"'
    )


def test_topics_verify_mode_and_min_insync_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, KAFKA_TOPICS="verify", KAFKA_MIN_INSYNC_REPLICAS="2", KAFKA_REPLICATION_FACTOR="3")
    policy = topic_policy(settings)
    assert (policy.mode, policy.replication, policy.min_insync_replicas) == ("verify", 3, 2)
    [line] = refused(monkeypatch, KAFKA_TOPICS="check")
    assert line.startswith("COUPONRUSH_KAFKA_TOPICS=check: Input should be 'create' or 'verify'")


def test_secrets_are_in_no_repr_no_summary_and_no_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, pem: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = load(
        monkeypatch,
        KAFKA_BOOTSTRAP_SERVERS="kafka-1:9096",
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="couponrush",
        KAFKA_SASL_PASSWORD=PASSWORD,
        KAFKA_SSL_CA_FILE=str(pem),
        KAFKA_EXTRA=f'{{"sasl.oauthbearer.client.secret": "{KEY_PASSWORD}"}}',
    )
    options = bootstrap.kafka_options(settings)
    built = [
        settings,
        options,
        bootstrap.relay_sink(settings),
        bootstrap.worker_source(settings),
        bootstrap.worker_dead_letter_sink(settings),
        bootstrap.dead_letter_source(settings, group=None),
        bootstrap.topic_admin(settings),
    ]
    shown = " ".join([*map(repr, built), *map(str, built), options.summary])
    assert "SASL_SSL" in shown
    assert "SCRAM-SHA-512 as couponrush" in options.summary
    assert PASSWORD not in shown
    assert KEY_PASSWORD not in shown
    assert all(PASSWORD not in r.getMessage() and KEY_PASSWORD not in r.getMessage() for r in caplog.records)


def test_every_client_configuration_passes_through_one_function_that_adds_our_logger() -> None:
    config = client_config("k:9092", {"linger.ms": 2}, PLAINTEXT)
    assert config["bootstrap.servers"] == "k:9092"
    assert "security.protocol" not in config  # librdkafka's default: PLAINTEXT
    assert isinstance(config["logger"], logging.Logger)
    assert config["logger"].name == "couponrush.kafka.librdkafka"
    for built in (
        producer_config("k:9092", message_timeout_ms=10_000),
        consumer_config("k:9092", "g", session_timeout_ms=6000, heartbeat_interval_ms=1000, fetch_wait_max_ms=100),
    ):
        assert built["logger"] is config["logger"]
