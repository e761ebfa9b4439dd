"""All configuration, read once from the environment (prefix ``COUPONRUSH_``).

Defaults target the services that run on a development machine of this project:
PostgreSQL and Redis on 127.0.0.1, and a Kafka-protocol broker on 127.0.0.1:9092.
Secrets (the admin token, Kafka passwords) have no default: they come from the environment only, or
from a file that an environment variable names (``*_FILE``, e.g. a mounted Kubernetes secret).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from couponrush.domain.topic_versions import dlq_topic

__all__ = ["Settings", "dlq_topic", "load_settings"]

PUBLISH_REQUESTED_TOPIC = "outside.coupon.publish.requested.v1"
PUBLISHED_TOPIC = "outside.coupon.published.v1"
CONSUMER_GROUP = "coupon"


KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
KafkaTopicsMode = Literal["create", "verify"]
KafkaProperty = str | int | float | bool

# librdkafka properties that COUPONRUSH_KAFKA_EXTRA may not set, and why: the service's guarantees rest
# on them (idempotent acks=all producer, key->partition mapping shared with Java clients, offsets
# committed only after the database commit, topics never created by the broker), or a setting of
# its own sets them (so that secrets never sit in a JSON blob and every value is validated once).
RESERVED_KAFKA_PROPERTIES: Mapping[str, str] = {
    "bootstrap.servers": "set COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS",
    "metadata.broker.list": "set COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS",
    "enable.idempotence": "the relay needs the idempotent producer",
    "acks": "the relay needs acks=all",
    "request.required.acks": "the relay needs acks=all",
    "partitioner": "keys must land on the partitions Java clients pick (murmur2_random)",
    "transactional.id": "the service does not use Kafka transactions",
    "enable.auto.commit": "offsets are committed only after the issuing transaction committed",
    "enable.auto.offset.store": "offsets are committed only after the issuing transaction committed",
    "auto.offset.reset": "a consumer must start at the earliest record, never skip",
    "group.id": "set COUPONRUSH_CONSUMER_GROUP",
    "group.protocol": "the classic group protocol is the one tested",
    "allow.auto.create.topics": "topics are never created by the broker (see COUPONRUSH_KAFKA_TOPICS)",
    "message.timeout.ms": "set COUPONRUSH_KAFKA_MESSAGE_TIMEOUT_MS",
    "session.timeout.ms": "set COUPONRUSH_KAFKA_SESSION_TIMEOUT_MS",
    "heartbeat.interval.ms": "set COUPONRUSH_KAFKA_HEARTBEAT_INTERVAL_MS",
    "fetch.wait.max.ms": "set COUPONRUSH_KAFKA_FETCH_WAIT_MAX_MS",
    "security.protocol": "set COUPONRUSH_KAFKA_SECURITY_PROTOCOL",
    "sasl.mechanism": "set COUPONRUSH_KAFKA_SASL_MECHANISM",
    "sasl.mechanisms": "set COUPONRUSH_KAFKA_SASL_MECHANISM",
    "sasl.username": "set COUPONRUSH_KAFKA_SASL_USERNAME",
    "sasl.password": "set COUPONRUSH_KAFKA_SASL_PASSWORD or COUPONRUSH_KAFKA_SASL_PASSWORD_FILE",
    "ssl.ca.location": "set COUPONRUSH_KAFKA_SSL_CA_FILE",
    "ssl.certificate.location": "set COUPONRUSH_KAFKA_SSL_CERT_FILE",
    "ssl.key.location": "set COUPONRUSH_KAFKA_SSL_KEY_FILE",
    "ssl.key.password": "set COUPONRUSH_KAFKA_SSL_KEY_PASSWORD or COUPONRUSH_KAFKA_SSL_KEY_PASSWORD_FILE",
    "log_level": "librdkafka's lines go through the service's logger (COUPONRUSH_LOG_LEVEL)",
    "logger": "librdkafka's lines go through the service's logger",
}
# Callbacks (error_cb, stats_cb, on_delivery, ...) are Python objects, never configuration text.
_CALLBACK_SUFFIXES = ("_cb", "on_delivery", "on_commit")

# Settings whose values never appear in an error message (they are secrets or may hold some).
_SECRET_FIELDS = {"admin_token", "user_token_secret", "kafka_sasl_password", "kafka_ssl_key_password", "kafka_extra"}


def _read_secret_file(field_name: str, path: Path) -> SecretStr:
    """The secret held in ``path`` (one trailing newline dropped); the error names the variable, never the content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{variable(field_name)}={path}: cannot read it ({exc.strerror or exc})") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{variable(field_name)}={path}: the file is empty")
    return SecretStr(text)


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Settings(BaseSettings):
    # hide_input_in_errors: a traceback (COUPONRUSH_LOG_LEVEL=DEBUG) never shows a value, which may be a secret.
    model_config = SettingsConfigDict(env_prefix="COUPONRUSH_", extra="ignore", hide_input_in_errors=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/couponrush"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Empty means "not configured": `couponrush dev` then starts the embedded broker.
    kafka_bootstrap_servers: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    admin_token: SecretStr | None = None
    # Answer plainly valid publish requests without FastAPI's per-request machinery (same contract;
    # see entrypoints/api/fast_publish.py). False: every request goes through the FastAPI route.
    http_fast_publish: bool = True
    # "granian": its native interface (RSGI) answers the publish route without ASGI; "uvicorn": plain ASGI.
    http_server: Literal["granian", "uvicorn"] = "granian"
    # Publish requests being decided at once per API process; more get a fast 503 with Retry-After.
    http_max_inflight: int = Field(default=512, ge=1, le=100_000)
    # Every body the API takes is a few hundred bytes; larger ones get 413 without being read whole.
    http_max_body_bytes: int = Field(default=4096, ge=256, le=1_048_576)

    kafka_partitions: int = Field(default=3, ge=1, le=1000)
    kafka_replication_factor: int = Field(default=1, ge=1)
    publish_requested_topic: str = PUBLISH_REQUESTED_TOPIC
    published_topic: str = PUBLISHED_TOPIC
    consumer_group: str = CONSUMER_GROUP
    # How long a fetch may wait on the broker. Tansu does not answer a waiting fetch early
    # when data arrives, so this bounds the idle produce->consume latency; very low values
    # (10-25 ms) starve a consumer facing a large backlog there. See docs/OPERATIONS.md.
    kafka_fetch_wait_max_ms: int = Field(default=100, ge=1, le=10_000)
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(default=1000, ge=100)
    # A produce that the broker has not acknowledged within this time fails back to the
    # relay, which leaves the outbox row unsent and retries it.
    kafka_message_timeout_ms: int = Field(default=10_000, ge=1000)

    # How every Kafka client (producer, consumer, admin) connects; see docs/OPERATIONS.md, "Kafka in
    # production". Secrets come from the environment or from the file a *_FILE variable names.
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    # Unset: the system's trust store (what a managed cluster with a public CA needs).
    kafka_ssl_ca_file: Path | None = None
    # A client certificate (mutual TLS): certificate and key, PEM files; the key may be encrypted.
    kafka_ssl_cert_file: Path | None = None
    kafka_ssl_key_file: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_key_password_file: Path | None = None
    # Any other librdkafka property, as a JSON object; RESERVED_KAFKA_PROPERTIES are refused.
    kafka_extra: Annotated[dict[str, KafkaProperty], NoDecode] = Field(default_factory=dict, repr=False)
    # The same librdkafka log line is written at most once per this many seconds (repeats are counted).
    kafka_log_repeat_s: float = Field(default=60.0, ge=0)
    # create: the relay and the worker create missing topics (admin rights needed); verify: they only
    # check that each exists with the expected partition count, and refuse to start otherwise.
    kafka_topics: KafkaTopicsMode = "create"
    # min.insync.replicas of topics this service creates; unset: the cluster's default (2 in production).
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)

    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=20, ge=1)
    relay_batch_size: int = Field(default=500, ge=1, le=100_000)
    # Upper bound on how long an idle relay sleeps between outbox scans when no
    # NOTIFY wakes it (covers a lost notification); the happy path never waits on it.
    relay_idle_scan_s: float = Field(default=1.0, gt=0)
    worker_batch_size: int = Field(default=500, ge=1, le=100_000)

    # Bound on recording an accepted request; a gate rebuild waits longer than this (grace).
    record_timeout_s: float = Field(default=2.0, gt=0)
    rebuild_grace_s: float = Field(default=3.0, gt=0)
    # Group commit of accepted requests: up to RECORD_FLUSHERS transactions at once, each taking
    # whatever is queued (up to RECORD_BATCH_MAX).
    record_flushers: int = Field(default=2, ge=1, le=64)
    record_batch_max: int = Field(default=500, ge=1, le=100_000)

    # A request still pending this long after it was accepted is published again (see service/redrive.py).
    redrive_after_s: float = Field(default=30.0, gt=0)
    # The worker logs the oldest accepted request still undecided once it is older than this.
    stall_after_s: float = Field(default=30.0, gt=0)

    # A record whose processing fails (not the infrastructure being away: that is retried forever)
    # is tried this many times, backing off from WORKER_RETRY_BACKOFF_S, then dead-lettered.
    worker_max_attempts: int = Field(default=5, ge=1, le=100)
    worker_retry_backoff_s: float = Field(default=0.1, gt=0)
    # How often the worker compares the Redis gates with the database and repairs them (0: never).
    reconcile_interval_s: float = Field(default=60.0, ge=0)

    # Opt-in user identity: when set, /api/v1/users/{userId}/... require a bearer token signed with
    # this secret for that same user id (see docs/OPERATIONS.md, "User identity").
    user_token_secret: SecretStr | None = None

    # A stream of a request's outcome (GET .../request/events) sends a comment this often while nothing
    # happens, so proxies don't close it as idle.
    sse_heartbeat_s: float = Field(default=15.0, ge=1, le=300)
    # How long a live-view session (the cookie set after signing in with the admin token) lasts.
    live_session_s: int = Field(default=12 * 3600, ge=60, le=7 * 24 * 3600)

    log_level: str = "INFO"
    # "auto": JSON lines when stdout is not a terminal, text when it is.
    log_format: Literal["auto", "json", "text"] = "auto"
    # The relay's and the worker's own HTTP endpoint (/metrics, /health/live, /health/ready); 0 turns it off.
    metrics_host: str = "127.0.0.1"
    relay_metrics_port: int = Field(default=9101, ge=0, le=65535)
    worker_metrics_port: int = Field(default=9102, ge=0, le=65535)

    @field_validator(
        "admin_token",
        "user_token_secret",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_sasl_password_file",
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "kafka_ssl_key_password",
        "kafka_ssl_key_password_file",
        "kafka_min_insync_replicas",
        mode="before",
    )
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("kafka_extra", mode="before")
    @classmethod
    def _extra_properties(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object of librdkafka properties, e.g. {"client.id": "couponrush"}')
        for name in value:
            if name in RESERVED_KAFKA_PROPERTIES:
                raise ValueError(f"{name!r} cannot be set here: {RESERVED_KAFKA_PROPERTIES[name]}")
            if name.endswith(_CALLBACK_SUFFIXES):
                raise ValueError(f"{name!r} is a callback, not a configuration property")
        return value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        problems: list[str] = []
        for secret, file in (
            ("kafka_sasl_password", "kafka_sasl_password_file"),
            ("kafka_ssl_key_password", "kafka_ssl_key_password_file"),
        ):
            path = getattr(self, file)
            if path is None:
                continue
            if getattr(self, secret) is not None:
                problems.append(f"set {variable(secret)} or {variable(file)}, not both")
                continue
            try:
                setattr(self, secret, _read_secret_file(file, path))
            except ValueError as exc:
                problems.append(str(exc))
        protocol = self.kafka_security_protocol
        uses_sasl = protocol.startswith("SASL_")
        uses_tls = protocol.endswith("SSL")
        sasl = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
        if uses_sasl:
            problems += [
                f"{variable(name)} is required with {protocol}" for name in sasl if getattr(self, name) is None
            ]
        else:
            problems += [
                f"{variable(name)} is set, but COUPONRUSH_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL"
                for name in sasl
                if getattr(self, name) is not None
            ]
        files = ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
        if not uses_tls:
            problems += [
                f"{variable(name)} is set, but COUPONRUSH_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS"
                for name in (*files, "kafka_ssl_key_password")
                if getattr(self, name) is not None
            ]
        else:
            for name in files:
                path = getattr(self, name)
                if path is not None and not path.is_file():
                    problems.append(f"{variable(name)}={path}: no such file")
            if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
                problems.append("COUPONRUSH_KAFKA_SSL_CERT_FILE and COUPONRUSH_KAFKA_SSL_KEY_FILE go together")
            if self.kafka_ssl_key_password is not None and self.kafka_ssl_key_file is None:
                problems.append("COUPONRUSH_KAFKA_SSL_KEY_PASSWORD is set without COUPONRUSH_KAFKA_SSL_KEY_FILE")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _grace_outlasts_recording(self) -> Settings:
        if self.rebuild_grace_s <= self.record_timeout_s:
            raise ValueError("COUPONRUSH_REBUILD_GRACE_S must be longer than COUPONRUSH_RECORD_TIMEOUT_S")
        return self

    @property
    def kafka_configured(self) -> bool:
        return bool(self.kafka_bootstrap_servers.strip())


PREFIX = "COUPONRUSH_"
# Read by the test suite and the benchmark, not by the service: never warned about.
_NOT_OURS = ("COUPONRUSH_TEST_", "COUPONRUSH_CHAOS_", "COUPONRUSH_BENCH_")


def variable(field_name: str) -> str:
    """The environment variable behind a settings field."""
    return PREFIX + field_name.upper()


def known_variables() -> list[str]:
    return sorted(variable(name) for name in Settings.model_fields)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``COUPONRUSH_*`` variables that configure nothing (a typo?), each with the closest known name."""
    known = known_variables()
    unknown = [n for n in environ if n.startswith(PREFIX) and n not in known and not n.startswith(_NOT_OURS)]
    return [(n, next(iter(difflib.get_close_matches(n, known, n=1, cutoff=0.75)), None)) for n in sorted(unknown)]


class ConfigurationError(Exception):
    """The environment does not make a valid configuration; ``lines`` say which variable and why."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def _describe(error: ValidationError) -> list[str]:
    lines: list[str] = []
    for e in error.errors():
        loc = e.get("loc", ())
        message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if loc:
            value = e.get("input")
            shown = "" if isinstance(value, dict) or loc[0] in _SECRET_FIELDS else f"={value!s:.60}"
            lines.append(f"{variable(str(loc[0]))}{shown}: {message}")
        else:
            lines.extend(message.split("; "))  # a model check lists each problem once
    return lines


def load_settings() -> Settings:
    """The settings from the environment; ``ConfigurationError`` names every variable that is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from exc
    except SettingsError as exc:  # a value the environment source could not even parse
        raise ConfigurationError([str(exc)]) from exc
