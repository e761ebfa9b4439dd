"""``python -m couponrush_bench.targets``: the performance targets, each scenario on a fresh system, wrk as load.

Scenarios (see BENCHMARKS.md for the targets they answer):
- burst: 15 s closed loop, 64 connections, every request a new user, a coupon that does not sell out;
  accepted/s, p99, the backlog's drain time, CPU per accepted request per stage (whole pipeline, wrk too).
- sustained: ~3,000 requests/s paced (wrk's per-connection delay) for 20 s; the backlog sampled during it.
- refused: a sold-out coupon, new users: refusals/s and p99 (no Redis round trip: SoldOutCache).
- drop: 300,000 requests from 100,000 users for 5,000 coupons, 128 connections; exact outcome checks.
- hot: one coupon, one partition, a 30,000-request backlog issued by a worker started after it, into an
  empty user_coupons and into one already holding 1,000,000 rows.
- steady: ~1,000 requests/s paced for 20 s: CPU per accepted request, time to issue p50/p99.
- overload: 1,024 connections closed loop (several times what is accepted): answers, 503s, API memory.
Each scenario runs ``--runs`` times; the JSON keeps every run, the summary medians.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from couponrush_bench.burst import Variant, one_burst, parse_variant
from couponrush_bench.harness import Sandbox, System, create_coupon
from couponrush_bench.polling import eventually
from couponrush_bench.servers import OwnRedis, ScratchDatabases, run_prefix
from couponrush_bench.wrkload import StageCpu, cpu_delta, publish_counts, run_wrk, wait_decided

Scenario = Callable[[Sandbox, Variant, int], Awaitable[dict[str, Any]]]


async def _system(
    sandbox: Sandbox,
    variant: Variant,
    name: str,
    *,
    roles: Sequence[str] = ("relay", "worker"),
    env: dict[str, str] | None = None,
) -> System:
    commands = {role: variant.command(role) for role in ("relay", "worker", "api")}
    commands["cli"] = [variant.python, "-m", "couponrush"]
    system = await sandbox.start_system(name, extra_env={**variant.env, **(env or {})}, commands=commands, roles=roles)
    system.start("api", args=("--workers", str(variant.api_workers or 1)))
    await system.wait_ready()
    return system


def _per(total: dict[str, float], n: float) -> dict[str, float]:
    return {k: round(v / n * 1e6, 1) for k, v in sorted(total.items()) if n and v > 0}


async def _pending(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM coupon_requests WHERE status = 'PENDING'"))
    finally:
        await conn.close()


async def _unrelayed(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM coupon_requests WHERE relayed_at IS NULL"))


async def burst(sandbox: Sandbox, variant: Variant, run: int) -> dict[str, Any]:
    return await one_burst(sandbox, variant, run, seconds=15, connections=64, api_workers=variant.api_workers or 1)


async def _paced(
    sandbox: Sandbox, variant: Variant, run: int, *, rate: float, seconds: float, name: str
) -> dict[str, Any]:
    system = await _system(sandbox, variant, f"{name}_{variant.name}_{run}")
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, 10_000_000)
        await asyncio.to_thread(run_wrk, system.base_url, coupon_id, seconds=3, connections=8, user_base=900_000_000)
        await wait_decided(system.database_url, coupon_id)
        connections = max(4, int(rate / 100))  # each connection paced at ~100 requests/s
        delay_ms = 1000 * connections / rate
        cpu = StageCpu(system, system.database_url)
        before_counts, before_cpu = await publish_counts(system.base_url), await cpu.snapshot()
        started = datetime.now(UTC)
        load = asyncio.create_task(
            asyncio.to_thread(
                run_wrk, system.base_url, coupon_id, seconds=seconds, connections=connections, delay_ms=delay_ms
            )
        )
        backlog: list[int] = []
        while not load.done():
            backlog.append(await _pending(system.database_url))
            await asyncio.sleep(0.5)
        result = await load
        after_counts = await publish_counts(system.base_url)
        drained = await wait_decided(system.database_url, coupon_id)
        after_cpu = await cpu.snapshot()
        conn = await asyncpg.connect(system.database_url)
        try:
            waits = [
                r["s"]
                for r in await conn.fetch(
                    "SELECT extract(epoch FROM uc.issued_at - r.requested_at) AS s FROM user_coupons uc"
                    " JOIN coupon_requests r ON r.request_id = uc.request_id WHERE uc.coupon_id = $1"
                    " AND r.requested_at >= $2",
                    coupon_id,
                    started,
                )
            ]
        finally:
            await conn.close()
    finally:
        await sandbox.stop_system(system)
    accepted = after_counts.get("accepted/OK", 0) - before_counts.get("accepted/OK", 0)
    spent = cpu_delta(before_cpu, after_cpu)
    spent["wrk"] = result.cpu_s
    per = _per(spent, accepted)
    waits.sort()
    return {
        "variant": variant.name,
        "run": run,
        "target_rate": rate,
        "accepted_per_s": round(accepted / result.seconds, 1),
        "p50_ms": round(result.latency_us.get("50", 0) / 1000, 2),
        "p99_ms": round(result.latency_us.get("99", 0) / 1000, 2),
        "backlog_max": max(backlog, default=0),
        "backlog_drained_s": round(drained, 2),
        "cpu_us_per_accepted": per,
        "cpu_us_per_accepted_total": round(sum(per.values()), 1),
        "time_to_issue_p50_ms": round(1000 * statistics.median(waits), 1) if waits else None,
        "time_to_issue_p99_ms": round(1000 * waits[int(0.99 * (len(waits) - 1))], 1) if waits else None,
    }


async def sustained(sandbox: Sandbox, variant: Variant, run: int) -> dict[str, Any]:
    return await _paced(sandbox, variant, run, rate=3000, seconds=20, name="sustained")


async def steady(sandbox: Sandbox, variant: Variant, run: int) -> dict[str, Any]:
    return await _paced(sandbox, variant, run, rate=1000, seconds=20, name="steady")


async def refused(sandbox: Sandbox, variant: Variant, run: int) -> dict[str, Any]:
    system = await _system(sandbox, variant, f"refused_{variant.name}_{run}")
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, 2000)
        await asyncio.to_thread(run_wrk, system.base_url, coupon_id, seconds=3, connections=16, user_base=900_000_000)
        before = await publish_counts(system.base_url)
        cpu = StageCpu(system, system.database_url)
        before_cpu = await cpu.snapshot()
        result = await asyncio.to_thread(run_wrk, system.base_url, coupon_id, seconds=10, connections=64)
        after = await publish_counts(system.base_url)
        after_cpu = await cpu.snapshot()
    finally:
        await sandbox.stop_system(system)
    sold_out = after.get("refused/SOLD_OUT", 0) - before.get("refused/SOLD_OUT", 0)
    spent = cpu_delta(before_cpu, after_cpu)
    spent["wrk"] = result.cpu_s
    return {
        "variant": variant.name,
        "run": run,
        "refused_per_s": round(sold_out / result.seconds, 1),
        "requests_per_s": round(result.per_second, 1),
        "p50_ms": round(result.latency_us.get("50", 0) / 1000, 2),
        "p99_ms": round(result.latency_us.get("99", 0) / 1000, 2),
        "cpu_us_per_refusal": _per(spent, sold_out),
    }


async def drop(sandbox: Sandbox, variant: Variant, run: int) -> dict[str, Any]:
    quantity, users, requests, connections = 5000, 100_000, 300_000, 128
    system = await _system(sandbox, variant, f"drop_{variant.name}_{run}")
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, quantity)
        before = await publish_counts(system.base_url)
        # wrk runs for a time, not a count: long enough for ``requests`` at the rate measured in a first second.
        probe = await asyncio.to_thread(
            run_wrk, system.base_url, coupon_id, seconds=1, connections=connections, crowd=users, user_base=1
        )
        seconds = max(5.0, (requests - probe.requests) / max(probe.per_second, 1.0))
        result = await asyncio.to_thread(
            run_wrk, system.base_url, coupon_id, seconds=seconds, connections=connections, crowd=users, user_base=1
        )
        after = await publish_counts(system.base_url)
        await wait_decided(system.database_url, coupon_id)
        conn = await asyncpg.connect(system.database_url)
        try:
            issued = await conn.fetchval("SELECT count(*) FROM user_coupons WHERE coupon_id = $1", coupon_id)
            holders = await conn.fetchval(
                "SELECT count(DISTINCT user_id) FROM user_coupons WHERE coupon_id = $1", coupon_id
            )
            last = await conn.fetchrow(
                "SELECT extract(epoch FROM uc.issued_at - r.requested_at) AS s FROM user_coupons uc"
                " JOIN coupon_requests r ON r.request_id = uc.request_id WHERE uc.coupon_id = $1"
                " ORDER BY uc.issued_at DESC LIMIT 1",
                coupon_id,
            )
            refused_later = await conn.fetchval(
                "SELECT count(*) FROM coupon_requests WHERE coupon_id = $1 AND status = 'REJECTED'", coupon_id
            )
        finally:
            await conn.close()
    finally:
        await sandbox.stop_system(system)
    told_ok = after.get("accepted/OK", 0) - before.get("accepted/OK", 0)
    total = probe.requests + result.requests
    return {
        "variant": variant.name,
        "run": run,
        "requests": total,
        "users": users,
        "quantity": quantity,
        "requests_per_s": round(total / (probe.seconds + result.seconds), 1),
        "p99_ms": round(result.latency_us.get("99", 0) / 1000, 2),
        "issued": issued,
        "duplicates": issued - holders,
        "told_ok": told_ok,
        "told_ok_equals_issued": told_ok == issued,
        "refused_after_acceptance": refused_later,
        "last_issued_after_accepted_s": round(float(last["s"]), 3) if last else None,
        "outcomes": {k: after[k] - before.get(k, 0) for k in after},
    }


async def hot(sandbox: Sandbox, variant: Variant, run: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"variant": variant.name, "run": run}
    for prefilled in (0, 1_000_000):
        system = await _system(
            sandbox,
            variant,
            f"hot{prefilled // 1000}_{variant.name}_{run}",
            roles=("relay",),
            env={"COUPONRUSH_KAFKA_PARTITIONS": "1"},
        )
        try:
            conn = await asyncpg.connect(system.database_url)
            try:
                if prefilled:
                    other = await conn.fetchval(
                        "INSERT INTO coupons (name, discount_rate, quantity, status, expired_at)"
                        " VALUES ('filler', 0.1, $1, 'PUBLISHABLE', now() + interval '1 day') RETURNING id",
                        prefilled,
                    )
                    await conn.execute(
                        "INSERT INTO user_coupons (user_id, coupon_id, request_id)"
                        " SELECT g, $1, 'fill' || g FROM generate_series(1, $2) g",
                        other,
                        prefilled,
                    )
                    await conn.execute("ANALYZE user_coupons")
                async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
                    coupon_id = await create_coupon(client, 1_000_000)
                backlog = 0
                while backlog < 30_000:
                    await asyncio.to_thread(
                        run_wrk,
                        system.base_url,
                        coupon_id,
                        seconds=3,
                        connections=32,
                        user_base=10_000_000 + backlog * 10,
                    )
                    backlog = int(
                        await conn.fetchval("SELECT count(*) FROM coupon_requests WHERE coupon_id = $1", coupon_id)
                    )

                await eventually(
                    functools.partial(_unrelayed, conn), lambda n: n == 0, timeout=120, what="the backlog on Kafka"
                )
                started = time.monotonic()
                system.start("worker")
                await system.wait_worker_assigned()
                joined = time.monotonic()
                await wait_decided(system.database_url, coupon_id, timeout_s=300)
                done = time.monotonic()
            finally:
                await conn.close()
        finally:
            await sandbox.stop_system(system)
        key = "prefilled_1m" if prefilled else "empty"
        figures[key] = {
            "backlog": backlog,
            "issued_per_s": round(backlog / (done - joined), 1),
            "including_join_s": round(done - started, 2),
        }
    return figures


async def overload(sandbox: Sandbox, variant: Variant, run: int) -> dict[str, Any]:
    system = await _system(sandbox, variant, f"overload_{variant.name}_{run}")
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, 10_000_000)
        api = system.processes["api"].pid
        rss_before = _rss_kib(api)
        before = await publish_counts(system.base_url)
        result = await asyncio.to_thread(
            run_wrk, system.base_url, coupon_id, seconds=15, connections=1024, timeout_s=10
        )
        after = await publish_counts(system.base_url)
        rss_after = _rss_kib(api)
        await wait_decided(system.database_url, coupon_id)
        lost = await _pending(system.database_url)
    finally:
        await sandbox.stop_system(system)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    shed = delta.get("unavailable/OVERLOADED", 0)
    return {
        "variant": variant.name,
        "run": run,
        "requests_per_s": round(result.per_second, 1),
        "accepted_per_s": round(delta.get("accepted/OK", 0) / result.seconds, 1),
        "shed_per_s": round(shed / result.seconds, 1),
        "p50_ms": round(result.latency_us.get("50", 0) / 1000, 2),
        "p99_ms": round(result.latency_us.get("99", 0) / 1000, 2),
        "socket_errors": result.socket_errors,
        "api_rss_kib_before_after": [rss_before, rss_after],
        "pending_after_drain": lost,
        "outcomes": delta,
    }


def _rss_kib(pid: int) -> int:
    """The API's resident memory, its worker processes included."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(entry.name) == pid or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


SCENARIOS: dict[str, Scenario] = {
    "burst": burst,
    "sustained": sustained,
    "refused": refused,
    "drop": drop,
    "hot": hot,
    "steady": steady,
    "overload": overload,
}


async def run(scenarios: Sequence[str], variants: Sequence[Variant], runs: int, out: Path) -> dict[str, Any]:
    redis = OwnRedis(databases=64, log_dir=out / "redis")
    await redis.start()
    sandbox = Sandbox(ScratchDatabases("postgresql://postgres@127.0.0.1:5432", run_prefix("targets_")), out, redis)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for name in scenarios:
            for run_no in range(runs):
                for variant in variants:
                    result = await SCENARIOS[name](sandbox, variant, run_no)
                    print(json.dumps({"scenario": name, **result}), flush=True)
                    results.setdefault(name, []).append(result)
    finally:
        await sandbox.close()
        redis.stop()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--variant", action="append", default=[], help="now | name=/checkout[:K=V,...]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/targets"))
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or ["now"])]
    started = time.monotonic()
    results = asyncio.run(
        run([s.strip() for s in args.scenarios.split(",") if s.strip()], variants, args.runs, args.out)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"targets-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"done in {time.monotonic() - started:.0f}s: {path}")


if __name__ == "__main__":
    main()
