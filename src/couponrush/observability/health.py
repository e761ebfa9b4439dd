"""Liveness and readiness, shared by the API and by the relay's and worker's own HTTP endpoint.

Ready means: PostgreSQL answers and its schema is current, Redis answers, and the Kafka cluster
answers. Each probe is bounded, and all run at once, so a readiness answer takes at most the timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol


class Probe(Protocol):
    @property
    def name(self) -> str: ...

    async def check(self) -> str:
        """ "UP", or why not."""
        ...


async def _bounded(probe: Probe, timeout_s: float) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            return await probe.check()
    except TimeoutError:
        return f"DOWN: no answer within {timeout_s:g}s"
    except Exception as exc:
        return f"DOWN: {type(exc).__name__}: {str(exc)[:200]}"


async def readiness(probes: Sequence[Probe], timeout_s: float = 3.0) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of a readiness answer: 200 when every probe is UP, else 503."""
    results = await asyncio.gather(*(_bounded(p, timeout_s) for p in probes))
    checks = {p.name: r for p, r in zip(probes, results, strict=True)}
    status = 200 if all(r == "UP" for r in checks.values()) else 503
    return status, {"code": status, "message": "OK" if status == 200 else "NOT_READY", "data": checks}


def liveness() -> tuple[int, dict[str, Any]]:
    return 200, {"code": 200, "message": "OK", "data": {"status": "UP"}}
