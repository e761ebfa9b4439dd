"""Which exceptions mean "the infrastructure is away" (retry forever) rather than "this record is bad".

The worker's retry policy (service/dead_letters.py) asks this; only adapters know driver exceptions.
"""

from __future__ import annotations

import asyncpg
import redis.exceptions

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
