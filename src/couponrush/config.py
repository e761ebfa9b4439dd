"""All configuration, read once from the environment (prefix ``COUPONRUSH_``).

Defaults target the services that run on a development machine of this project:
PostgreSQL and Redis on 127.0.0.1, and a Kafka-protocol broker on 127.0.0.1:9092.
Secrets (the admin token) have no default: they come from the environment only.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from couponrush.domain.topic_versions import dlq_topic

__all__ = ["Settings", "dlq_topic", "load_settings"]

PUBLISH_REQUESTED_TOPIC = "outside.coupon.publish.requested.v1"
PUBLISHED_TOPIC = "outside.coupon.published.v1"
CONSUMER_GROUP = "coupon"


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COUPONRUSH_", extra="ignore")

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

    # A record whose processing fails (not the infrastructure being away: that is retried forever)
    # is tried this many times, backing off from WORKER_RETRY_BACKOFF_S, then dead-lettered.
    worker_max_attempts: int = Field(default=5, ge=1, le=100)
    worker_retry_backoff_s: float = Field(default=0.1, gt=0)
    # How often the worker compares the Redis gates with the database and repairs them (0: never).
    reconcile_interval_s: float = Field(default=60.0, ge=0)

    # Opt-in user identity: when set, /api/v1/users/{userId}/... require a bearer token signed with
    # this secret for that same user id (see docs/OPERATIONS.md, "User identity").
    user_token_secret: SecretStr | None = None

    log_level: str = "INFO"
    # "auto": JSON lines when stdout is not a terminal, text when it is.
    log_format: Literal["auto", "json", "text"] = "auto"
    # The relay's and the worker's own HTTP endpoint (/metrics, /health/live, /health/ready); 0 turns it off.
    metrics_host: str = "127.0.0.1"
    relay_metrics_port: int = Field(default=9101, ge=0, le=65535)
    worker_metrics_port: int = Field(default=9102, ge=0, le=65535)

    @field_validator("admin_token", "user_token_secret", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value

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
            shown = "" if isinstance(value, dict) else f"={value!s:.60}"
            lines.append(f"{variable(str(loc[0]))}{shown}: {message}")
        else:
            lines.append(message)
    return lines


def load_settings() -> Settings:
    """The settings from the environment; ``ConfigurationError`` names every variable that is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from exc
