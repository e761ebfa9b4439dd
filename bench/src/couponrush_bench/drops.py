"""A measured drop: the crowd sent by the load generator, then the database read once it has settled.

Used by every scenario of the suite (on a system it started) and by ``couponrush-bench drop`` (against a
system already running).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from couponrush_bench import invariants
from couponrush_bench.harness import System, create_coupon
from couponrush_bench.loadgen import Call, LoadRun, post_json, run_load
from couponrush_bench.measure import cpu_snapshot, http_figures, latency_summary_ms

Progress = Callable[[str, int, int], None]  # (label, done, total)


@dataclass
class BenchOptions:
    # The PostgreSQL server where each run creates its databases (named db_prefix + a run id), all dropped
    # after the run. Redis and the broker are started fresh for every run.
    postgres: str = "postgresql://postgres@127.0.0.1:5432"
    db_prefix: str = "couponrush_bench_"
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


def publish_calls(host: str, port: int, coupon_id: int, users: Sequence[int]) -> list[Call]:
    return [
        Call(post_json(host, port, f"/api/v1/users/{u}/coupons/publish", {"couponId": coupon_id}), u) for u in users
    ]


def load_progress(options: BenchOptions, label: str, total: int) -> Callable[[int], None]:
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if options.progress is not None and (done % 500 == 0 or done == total):
            options.progress(label, done, total)

    return advance


async def until_issued(conn: asyncpg.Connection, coupon_id: int, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval("SELECT count(*) FROM user_coupons WHERE coupon_id = $1", coupon_id) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} issued after {timeout}s")
        await asyncio.sleep(0.05)


def series(run: LoadRun, issued_at: Sequence[datetime]) -> dict[str, list[float]]:
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


def drain_s(settled: invariants.Settled, load_ended: datetime) -> float | None:
    """Last request answered -> last coupon issued; 0 when the coupons were all issued before the crowd ended."""
    last = settled.last_issued_at
    return round(max(0.0, (last - load_ended).total_seconds()), 3) if last else None


async def measured_drop(
    options: BenchOptions,
    system: System,
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
    port = system.http_port
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        if options.warmup_requests:
            warm_id = await create_coupon(client, options.warmup_requests, name="bench warm-up")
            warm_users = range(10**12, 10**12 + options.warmup_requests)
            calls = publish_calls("127.0.0.1", port, warm_id, warm_users)
            await run_load("127.0.0.1", port, calls, concurrency=options.concurrency)
            await invariants.settle(system.database_url, warm_id, settle_timeout)
        coupon_id = await create_coupon(client, quantity, name="bench")
    calls = publish_calls("127.0.0.1", port, coupon_id, users)
    cpu_before = cpu_snapshot(system)
    run = await run_load(
        "127.0.0.1",
        port,
        calls,
        concurrency=options.concurrency if rate is None else max(options.concurrency, 256),
        rate=rate,
        on_progress=load_progress(options, label, len(calls)),
    )
    load_ended = datetime.now(UTC)
    settled = await invariants.settle(system.database_url, coupon_id, settle_timeout)
    cpu_after = cpu_snapshot(system)
    accepted = max(1, sum(1 for r in run.results if r.status == 200))
    return {
        # CPU milliseconds each stage spent per accepted request, load and drain together.
        "cpu_ms_per_accepted": {
            role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1000 / accepted, 3) for role in cpu_after
        },
        "http": http_figures(run),
        "time_to_issue_ms": latency_summary_ms(settled.time_to_issue_s),
        "drain_s": drain_s(settled, load_ended),
        "last_issue_after_its_acceptance_s": round(settled.time_to_issue_s[-1], 3) if settled.time_to_issue_s else None,
        "invariants": invariants.drop_checks(run.results, settled, quantity, reserving=reserving),
        "_series": series(run, settled.issued_at),
    }


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
) -> dict[str, Any]:
    """One drop against a system already running (``make run``): the figures of that drop.

    That system is couponrush, so the reserving gate's invariants apply (told OK = issued).
    """
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        coupon_id = await create_coupon(client, quantity, admin_token=admin_token, name="bench drop")
    rng = random.Random(coupon_id)
    base = rng.randrange(1, 2**40)  # fresh users for every drop against a long-running system
    ids = [base + n for n in range(users)]
    crowd = ids + [rng.choice(ids) for _ in range(max(0, requests - users))]
    rng.shuffle(crowd)
    calls = publish_calls(host, port, coupon_id, crowd)
    run = await run_load(
        host,
        port,
        calls,
        concurrency=options.concurrency,
        rate=rate,
        on_progress=load_progress(options, f"drop of coupon {coupon_id}", len(calls)),
    )
    load_ended = datetime.now(UTC)
    settled = await invariants.settle(database_url, coupon_id, 300)
    return {
        "coupon_id": coupon_id,
        "http": http_figures(run),
        "time_to_issue_ms": latency_summary_ms(settled.time_to_issue_s),
        "drain_s": drain_s(settled, load_ended),
        "invariants": invariants.drop_checks(run.results, settled, quantity, reserving=True),
    }
