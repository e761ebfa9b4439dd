"""Which exceptions mean "the infrastructure is away" (retry forever) rather than "this record is bad".

The worker's retry policy (service/dead_letters.py) asks this; only adapters know driver exceptions.
"""

from __future__ import annotations

import traceback

import asyncpg
import redis.exceptions
from confluent_kafka import KafkaException

from couponrush.adapters.kafka_clients import failure_text
from couponrush.adapters.kafka_topics import TopicsNotReady
from couponrush.config import Settings, redacted

_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    OSError,  # refused / reset connections
    TimeoutError,
    asyncpg.PostgresConnectionError,  # 08xxx: the connection failed
    asyncpg.InterfaceError,  # "connection is closed", a pool closing
    asyncpg.OperatorInterventionError,  # 57xxx: admin shutdown, cannot connect now, cancelled
    asyncpg.InsufficientResourcesError,  # 53xxx: too many connections, disk full
    asyncpg.SerializationError,  # 40001 / deadlock: contention, retrying succeeds
    asyncpg.DeadlockDetectedError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


def is_infrastructure_failure(exc: BaseException) -> bool:
    return isinstance(exc, _INFRASTRUCTURE)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _raised_in(exc: BaseException, package: str) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return any(f"/{package}/" in frame.filename for frame in frames)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def describe_unreachable(exc: BaseException, settings: Settings) -> str | None:
    """One line naming the ``COUPONRUSH_*`` variable and address of the service that failed, or None.

    For operators: a traceback of driver internals says less than "PostgreSQL at X refused Y".
    """
    db = f"PostgreSQL at {redacted(settings.database_url)} (COUPONRUSH_DATABASE_URL)"
    cache = f"Redis at {redacted(settings.redis_url)} (COUPONRUSH_REDIS_URL)"
    broker = f"Kafka at {settings.kafka_bootstrap_servers or '(unset)'} (COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS)"
    for cause in _chain(exc):
        if isinstance(cause, (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            return f"{db} refused the login: {_reason(cause)}"
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return f"{db}: {_reason(cause)} (run `couponrush migrate` to create it)"
        if isinstance(cause, asyncpg.PostgresError | asyncpg.InterfaceError) and is_infrastructure_failure(cause):
            return f"{db} is unavailable: {_reason(cause)}"
        if isinstance(cause, redis.exceptions.AuthenticationError | redis.exceptions.ResponseError) and (
            "auth" in str(cause).lower() or "password" in str(cause).lower()
        ):
            return f"{cache} refused the login: {_reason(cause)}"
        if isinstance(cause, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return f"{cache} is unreachable: {_reason(cause)}"
        if isinstance(cause, TopicsNotReady):
            return f"{broker}: {failure_text(cause)}"
        if isinstance(cause, KafkaException):
            return f"{broker} is unreachable: {failure_text(cause)[:300]}"
        if isinstance(cause, OSError | TimeoutError):
            if _raised_in(cause, "asyncpg"):
                return f"{db} is unreachable: {_reason(cause)}"
            if _raised_in(cause, "redis"):
                return f"{cache} is unreachable: {_reason(cause)}"
    return None
