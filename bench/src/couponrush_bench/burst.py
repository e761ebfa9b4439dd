"""``couponrush-bench burst``: accepted/s, p99 and CPU per accepted request per stage under wrk.

Variants are measured alternately in one run (A B A B ...), so their ratio holds although this
machine's speed drifts by tens of percent within an hour. A variant is this checkout, or another
checkout's virtualenv (``--variant prev=/path/to/checkout``): its own ``couponrush`` runs every role
and its own migrations.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from couponrush_bench.harness import ADMIN_TOKEN, Sandbox, System, create_coupon
from couponrush_bench.servers import OwnRedis, ScratchDatabases, run_prefix
from couponrush_bench.wrkload import StageCpu, cpu_delta, publish_counts, run_wrk, wait_decided


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    api_workers: int | None = None  # None: the run's --api-workers
    # CPU priority of the relay and worker processes (``nice``): 0 is the API's own.
    background_nice: int = 0
    # The report's design (couponrush_bench.report): its API and worker, the product's relay.
    report: bool = False

    def command(self, role: str) -> list[str]:
        if self.report and role in ("api", "worker"):
            return [self.python, "-m", "couponrush_bench.report", role]
        command = [self.python, "-m", "couponrush", role]
        if role in ("relay", "worker") and self.background_nice:
            return ["nice", "-n", str(self.background_nice), *command]
        return command


def parse_variant(text: str) -> Variant:
    """``now`` (this checkout), ``report`` (the report's design, built in couponrush_bench.report),
    ``name=/path/to/checkout`` (its .venv), then ``:KEY=VALUE,...``: environment variables, and ``workers=N``
    (API processes) and ``nice=N`` (relay and worker priority)."""
    head, _, envs = text.partition(":")
    name, _, path = head.partition("=")
    env = dict(item.split("=", 1) for item in envs.split(",") if item)
    workers = env.pop("workers", None)
    nice = env.pop("nice", "0")
    python = str(Path(path) / ".venv" / "bin" / "python") if path else sys.executable
    return Variant(
        name=name,
        python=python,
        env=env,
        api_workers=None if workers is None else int(workers),
        background_nice=int(nice),
        report=name == "report",
    )


async def start(sandbox: Sandbox, variant: Variant, run_no: int, api_workers: int) -> System:
    commands = {role: variant.command(role) for role in ("relay", "worker", "api")}
    commands["cli"] = [variant.python, "-m", "couponrush"]
    system = await sandbox.start_system(
        f"burst_{variant.name}_{run_no}", extra_env=variant.env, commands=commands, roles=("relay", "worker")
    )
    system.start("api", args=("--workers", str(variant.api_workers or api_workers)))
    await system.wait_ready()
    return system


async def one_burst(
    sandbox: Sandbox, variant: Variant, run_no: int, *, seconds: float, connections: int, api_workers: int
) -> dict[str, Any]:
    system = await start(sandbox, variant, run_no, api_workers)
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            coupon_id = await create_coupon(client, 10_000_000)
        url = system.base_url
        await asyncio.to_thread(run_wrk, url, coupon_id, seconds=3, connections=16, user_base=900_000_000)
        await wait_decided(system.database_url, coupon_id)
        cpu = StageCpu(system, system.database_url)
        counts_before, cpu_before = await publish_counts(url), await cpu.snapshot()
        load = await asyncio.to_thread(run_wrk, url, coupon_id, seconds=seconds, connections=connections)
        counts_after, cpu_after = await publish_counts(url), await cpu.snapshot()
        drained_s = await wait_decided(system.database_url, coupon_id)
        cpu_total = await cpu.snapshot()
    finally:
        await sandbox.stop_system(system)
    accepted = counts_after.get("accepted/OK", 0) - counts_before.get("accepted/OK", 0)
    during = cpu_delta(cpu_before, cpu_after)
    whole = cpu_delta(cpu_before, cpu_total)  # including the backlog drained after the burst
    whole["wrk"] = load.cpu_s
    per_request = {k: round(v / accepted * 1e6, 1) for k, v in sorted(whole.items()) if accepted}
    return {
        "variant": variant.name,
        "run": run_no,
        "accepted_per_s": round(accepted / load.seconds, 1),
        "requests_per_s": round(load.per_second, 1),
        "p50_ms": round(load.latency_us.get("50", 0) / 1000, 2),
        "p99_ms": round(load.latency_us.get("99", 0) / 1000, 2),
        "socket_errors": load.socket_errors,
        "outcomes": {k: counts_after[k] - counts_before.get(k, 0) for k in counts_after},
        "backlog_drained_s": round(drained_s, 2),
        "cpu_us_per_accepted": per_request,
        "cpu_us_per_accepted_total": round(sum(per_request.values()), 1),
        "cpu_during_burst_s": {k: round(v, 2) for k, v in during.items()},
    }


async def run(
    variants: Sequence[Variant], *, runs: int, seconds: float, connections: int, api_workers: int, out: Path
) -> list[dict[str, Any]]:
    redis = OwnRedis(databases=64, log_dir=out / "redis")
    await redis.start()
    sandbox = Sandbox(ScratchDatabases("postgresql://postgres@127.0.0.1:5432", run_prefix("bench_")), out, redis)
    results: list[dict[str, Any]] = []
    try:
        for run_no in range(runs):
            for variant in variants:
                result = await one_burst(
                    sandbox, variant, run_no, seconds=seconds, connections=connections, api_workers=api_workers
                )
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        await sandbox.close()
        redis.stop()
    return results


def write(results: Sequence[dict[str, Any]], out: Path) -> Path:
    summary = summarize(results)
    print(json.dumps(summary, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"burst-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"runs": list(results), "summary": summary}, indent=2) + "\n")
    return path


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["variant"], []).append(r)
    summary: dict[str, Any] = {}
    for name, rs in by.items():
        stages = sorted({k for r in rs for k in r["cpu_us_per_accepted"]})
        summary[name] = {
            "runs": len(rs),
            "accepted_per_s": statistics.median(r["accepted_per_s"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "backlog_drained_s": statistics.median(r["backlog_drained_s"] for r in rs),
            "cpu_us_per_accepted_total": statistics.median(r["cpu_us_per_accepted_total"] for r in rs),
            "cpu_us_per_accepted": {
                s: statistics.median(r["cpu_us_per_accepted"].get(s, 0.0) for r in rs) for s in stages
            },
        }
    names = list(by)
    if len(names) >= 2:
        base = summary[names[0]]["accepted_per_s"]
        for name in names[1:]:
            summary[name]["ratio_vs_" + names[0]] = round(summary[name]["accepted_per_s"] / base, 2) if base else None
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", action="append", default=[], help="now | name=/checkout[:K=V,...]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/burst"))
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or ["now"])]
    started = time.monotonic()
    results = asyncio.run(
        run(
            variants,
            runs=args.runs,
            seconds=args.seconds,
            connections=args.connections,
            api_workers=args.api_workers,
            out=args.out,
        )
    )
    path = write(results, args.out)
    print(f"done in {time.monotonic() - started:.0f}s: {path} (admin token for manual runs: {ADMIN_TOKEN})")


if __name__ == "__main__":
    main()
