"""Bad input over HTTP: schemathesis against the app's own OpenAPI schema, on the running API.

Valid and invalid requests (the schema's negation) for every operation: no answer is a 5xx, and
every 4xx is the envelope ``{"code", "message", "data"}`` with ``code`` equal to the status.
Bounded (examples per operation and mode) so it stays a few seconds in the default suite.
"""

from __future__ import annotations

import asyncio
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from couponrush_bench.harness import ADMIN_TOKEN, System

EXAMPLES_PER_OPERATION = 25


def fuzz(base_url: str) -> list[str]:
    """Run every operation with valid and invalid inputs; return the problems found."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    problems: list[str] = []
    calls = 0

    def check(case: Any, response: Any) -> None:
        status = response.status_code
        where = f"{case.method} {case.formatted_path} -> {status}"
        if status >= 500:
            problems.append(f"{where}: {response.text[:300]}")
        elif status >= 400:
            body = response.json()
            if set(body) != {"code", "message", "data"} or body["code"] != status or not body["data"].get("reason"):
                problems.append(f"{where}: not the envelope: {response.text[:300]}")

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the app's own schema must be valid
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy: SearchStrategy[Any] = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def call(case: Any) -> None:
                nonlocal calls
                # Admin routes get the real token, so their validation is what is exercised.
                response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
                calls += 1
                check(case, response)

            try:
                call()
            except Unsatisfiable:
                # No invalid input exists for an operation without parameters or body (e.g. /health/live).
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert calls >= 100, calls  # it really exercised the API
    return problems


async def test_no_input_gets_a_5xx_and_every_4xx_is_in_the_envelope(system: System) -> None:
    problems = await asyncio.to_thread(fuzz, system.base_url)
    assert problems == [], "\n".join(problems[:20])
