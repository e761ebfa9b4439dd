"""The benchmark's scenarios and the variants of the system they measure; every run on a fresh system.

Variants:
- ``legacy``: the design the report replaced (Redis sorted set, batch insert every minute; legacy.py);
- ``report``: the report's Kafka design as its code does it: the flag gate, one transaction per
  accepted request, one message, one transaction, one offset commit in the worker (report/);
- ``couponrush``: this code as configured by default (reserving gate, group-committed recording,
  batched issuing);
- ``couponrush-fetch10``: the same with the consumer's fetch wait at 10 ms.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from couponrush.dev.broker import port_open
from couponrush_bench import invariants, legacy, report
from couponrush_bench.drops import (
    BenchOptions,
    drain_s,
    load_progress,
    measured_drop,
    publish_calls,
    series,
    until_issued,
)
from couponrush_bench.harness import ROLES, Sandbox, System, couponrush_command, create_coupon
from couponrush_bench.loadgen import Call, get, run_load
from couponrush_bench.measure import http_figures, latency_summary_ms
from couponrush_bench.polling import eventually


@dataclass(frozen=True, slots=True)
class Variant:
    env: Mapping[str, str] = field(default_factory=dict)
    # role -> the process that runs it instead of couponrush's (see harness.System.commands)
    commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    reserving: bool = True  # OK means a unit is reserved: told OK = issued is an invariant


VARIANTS: dict[str, Variant] = {
    "report": Variant(commands=report.commands(), reserving=False),
    "couponrush": Variant(),
    # The same code with the consumer's fetch wait at 10 ms: on Tansu a waiting fetch is not answered
    # early when data arrives, so the default 100 ms is the floor of the time to issue there; this
    # variant shows the pipeline's own latency (10 ms starves a consumer facing a large backlog on Tansu,
    # hence not the default; a real Kafka broker answers early and needs neither).
    "couponrush-fetch10": Variant(env={"COUPONRUSH_KAFKA_FETCH_WAIT_MAX_MS": "10"}),
}

SCENARIO_VARIANTS: dict[str, tuple[str, ...]] = {
    "ceiling": ("generator",),
    "accept": ("report", "couponrush"),
    "hot-issue": ("report", "couponrush"),
    "steady": ("legacy", "report", "couponrush", "couponrush-fetch10"),
    "drop": ("couponrush",),
}


async def start(
    options: BenchOptions,
    sandbox: Sandbox,
    name: str,
    variant: Variant,
    *,
    env: Mapping[str, str] | None = None,
    roles: Sequence[str] = ROLES,
) -> System:
    commands = dict(variant.commands)
    commands["api"] = [*commands.get("api", couponrush_command("api")), "--workers", str(options.api_workers)]
    return await sandbox.start_system(name, extra_env={**variant.env, **(env or {})}, commands=commands, roles=roles)


async def scenario_ceiling(options: BenchOptions, sandbox: Sandbox, run_no: int) -> dict[str, Any]:
    system = await start(options, sandbox, f"ceiling-{run_no}", VARIANTS["couponrush"], roles=("api",))
    try:
        calls = [Call(get("127.0.0.1", system.http_port, "/health/live"))] * options.ceiling_requests
        run = await run_load(
            "127.0.0.1",
            system.http_port,
            calls,
            concurrency=options.concurrency,
            on_progress=load_progress(options, f"ceiling #{run_no}", len(calls)),
        )
        return {"http": http_figures(run)}
    finally:
        await sandbox.stop_system(system)


async def scenario_accept(options: BenchOptions, sandbox: Sandbox, variant: str, run_no: int) -> dict[str, Any]:
    system = await start(options, sandbox, f"accept-{variant}-{run_no}", VARIANTS[variant])
    try:
        users = list(range(1, options.accept_requests + 1))
        random.Random(run_no).shuffle(users)
        return await measured_drop(
            options,
            system,
            f"accept {variant} #{run_no}",
            users=users,
            quantity=options.accept_requests + 1000,  # larger than the run: every request is reserved
            rate=None,
            reserving=VARIANTS[variant].reserving,
        )
    finally:
        await sandbox.stop_system(system)


async def scenario_hot_issue(options: BenchOptions, sandbox: Sandbox, variant: str, run_no: int) -> dict[str, Any]:
    """Issuing alone: a backlog of one hot coupon on one partition, then the worker starts."""
    env = {"COUPONRUSH_KAFKA_PARTITIONS": "1"}
    system = await start(
        options, sandbox, f"hot-{variant}-{run_no}", VARIANTS[variant], env=env, roles=("relay", "api")
    )
    try:
        quantity = options.hot_requests
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, quantity, name="bench")
        users = list(range(1, quantity + 1))
        await run_load(
            "127.0.0.1",
            system.http_port,
            publish_calls("127.0.0.1", system.http_port, coupon_id, users),
            concurrency=options.concurrency,
            on_progress=load_progress(options, f"hot-issue {variant} #{run_no} (backlog)", quantity),
        )
        conn = await system.db()
        try:
            await eventually(
                lambda: conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"),
                lambda unsent: unsent == 0,
                timeout=120,
                interval=0.1,
                what="the relay draining the outbox",
            )
            system.start("worker")
            await until_issued(conn, coupon_id, quantity, timeout=600)
            settled = await invariants.read_settled(conn, coupon_id)
        finally:
            await conn.close()
        assert settled.first_issued_at is not None
        assert settled.last_issued_at is not None
        span = max((settled.last_issued_at - settled.first_issued_at).total_seconds(), 1e-3)
        return {
            "issued": len(settled.holders),
            "issuing_span_s": round(span, 3),
            "issued_per_s": round(len(settled.holders) / span, 1),
            "no_duplicates": len(settled.holders) == len(set(settled.holders)),
        }
    finally:
        await sandbox.stop_system(system)


async def scenario_steady(options: BenchOptions, sandbox: Sandbox, variant: str, run_no: int) -> dict[str, Any]:
    """Time to issue at a steady arrival rate (open loop)."""
    count = int(options.steady_rate * options.steady_seconds)
    users = list(range(1, count + 1))
    if variant == "legacy":
        return await _legacy_steady(options, sandbox, users, run_no)
    system = await start(options, sandbox, f"steady-{variant}-{run_no}", VARIANTS[variant])
    try:
        return await measured_drop(
            options,
            system,
            f"steady {variant} #{run_no}",
            users=users,
            quantity=count + 1000,
            rate=options.steady_rate,
            reserving=VARIANTS[variant].reserving,
        )
    finally:
        await sandbox.stop_system(system)


async def _legacy_steady(options: BenchOptions, sandbox: Sandbox, users: Sequence[int], run_no: int) -> dict[str, Any]:
    # Schema and broker only; the legacy server replaces the roles.
    system = await sandbox.start_system(
        f"steady-legacy-{run_no}",
        extra_env={"COUPONRUSH_BENCH_LEGACY_INTERVAL_S": str(options.legacy_interval_s)},
        commands={"legacy": legacy.command()},
        roles=(),
    )
    try:
        system.start("legacy")

        async def listening() -> bool:
            return port_open("127.0.0.1", system.http_port)

        await eventually(listening, bool, timeout=30, what="the legacy server listening")
        quantity = len(users) + 1000
        conn = await system.db()
        try:
            coupon_id = await legacy.insert_coupon(conn, quantity)
        finally:
            await conn.close()
        async with httpx.AsyncClient(base_url=system.base_url) as client:
            (await client.post("/legacy/open", json={"couponId": coupon_id, "quantity": quantity})).raise_for_status()
        run = await run_load(
            "127.0.0.1",
            system.http_port,
            publish_calls("127.0.0.1", system.http_port, coupon_id, users),
            concurrency=256,
            rate=options.steady_rate,
            on_progress=load_progress(options, f"steady legacy #{run_no}", len(users)),
        )
        load_ended = datetime.now(UTC)
        conn = await system.db()
        try:
            await until_issued(conn, coupon_id, len(users), timeout=options.legacy_interval_s * 3)
            settled = await invariants.read_settled(conn, coupon_id)
        finally:
            await conn.close()
        return {
            "http": http_figures(run),
            "time_to_issue_ms": latency_summary_ms(settled.time_to_issue_s),
            "drain_s": drain_s(settled, load_ended),
            "invariants": invariants.drop_checks(run.results, settled, quantity, reserving=True),
            "_series": series(run, settled.issued_at),
        }
    finally:
        await sandbox.stop_system(system)


async def scenario_drop(options: BenchOptions, sandbox: Sandbox, variant: str, run_no: int) -> dict[str, Any]:
    """The big drop: many more requests than users, many more users than coupons."""
    system = await start(options, sandbox, f"drop-{variant}-{run_no}", VARIANTS[variant])
    try:
        rng = random.Random(run_no)
        ids = list(range(1, options.drop_users + 1))
        users = ids + [rng.choice(ids) for _ in range(options.drop_requests - options.drop_users)]
        rng.shuffle(users)
        return await measured_drop(
            options,
            system,
            f"drop {variant} #{run_no}",
            users=users,
            quantity=options.drop_quantity,
            rate=None,
            reserving=VARIANTS[variant].reserving,
        )
    finally:
        await sandbox.stop_system(system)


async def run_scenario(
    options: BenchOptions, sandbox: Sandbox, scenario: str, variant: str, run_no: int
) -> dict[str, Any]:
    if scenario == "ceiling":
        return await scenario_ceiling(options, sandbox, run_no)
    if scenario == "accept":
        return await scenario_accept(options, sandbox, variant, run_no)
    if scenario == "hot-issue":
        return await scenario_hot_issue(options, sandbox, variant, run_no)
    if scenario == "steady":
        return await scenario_steady(options, sandbox, variant, run_no)
    if scenario == "drop":
        return await scenario_drop(options, sandbox, variant, run_no)
    raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIO_VARIANTS)}")
