"""What 10,000 clients waiting for their outcome cost the API while nothing happens, and how fast they are
answered when the decision commits (docs/OPERATIONS.md, "Answers without polling").

A system of its own (API only: no worker decides anything), N accepted requests written straight into
PostgreSQL as PENDING, then N raw HTTP connections each holding ``GET .../request?wait=30`` (long poll),
later N holding ``.../request/events`` (SSE). The API process's RSS (``/proc/PID/status``) and CPU time
(``/proc/PID/stat``) are read before and during an idle window; then one UPDATE decides every request
and the time until the last client has its answer is measured. Also, in this process: what the waiting
mechanism alone (``Waiters``, a future per waiter) costs for N waiters (tracemalloc).

    couponrush-bench waiters --clients 10000
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
import httpx

from couponrush.service.outcomes import Waiters, _settle, _woken
from couponrush_bench.harness import ADMIN_TOKEN, Sandbox, System, coupon_body
from couponrush_bench.polling import eventually
from couponrush_bench.servers import ScratchDatabases, run_prefix

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Figures:
    kind: str
    clients: int
    rss_before_mb: float
    rss_waiting_mb: float
    per_client_kb: float
    idle_window_s: float
    idle_cpu_s: float
    idle_cpu_percent: float
    answered_all_s: float | None  # from the deciding commit to the last client's answer


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def registry_cost(clients: int) -> float:
    """Bytes per waiter of the waiting mechanism alone, as ``service.outcomes.until`` holds it: the waiter's
    future in the registry, the wait's own future, a done-callback and a timer handle."""
    waiters = Waiters()
    loop = asyncio.get_running_loop()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    futures = [waiters.register(user, 1) for user in range(clients)]
    gates = [loop.create_future() for _ in range(clients)]
    for future, gate in zip(futures, gates, strict=True):
        future.add_done_callback(functools.partial(_woken, gate))
    timers = [loop.call_later(30, _settle, g, False) for g in gates]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    for user, (future, timer) in enumerate(zip(futures, timers, strict=True)):
        timer.cancel()
        waiters.unregister(user, 1, future)
    return grown / clients


async def seed(system: System, clients: int) -> int:
    async with httpx.AsyncClient(base_url=system.base_url) as client:
        created = await client.post(
            "/api/v1/coupons", json=coupon_body(clients), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        coupon_id: int = created.json()["data"]["id"]
    conn = await asyncpg.connect(system.database_url)
    try:
        await conn.execute(
            "INSERT INTO coupon_requests (request_id, user_id, coupon_id, requested_at)"
            " SELECT 'w' || $1::bigint || '-' || u, u, $1::bigint, now() FROM generate_series(1, $2) u",
            coupon_id,
            clients,
        )
    finally:
        await conn.close()
    return coupon_id


async def waiting(system: System, kind: str) -> float:
    async with httpx.AsyncClient(base_url=system.base_url) as client:
        for line in (await client.get("/metrics")).text.splitlines():
            if line.startswith(f'couponrush_waiting_clients{{kind="{kind}"}}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def hold(
    system: System, coupon_id: int, clients: int, path: str
) -> tuple[list[asyncio.StreamReader], list[asyncio.StreamWriter]]:
    """N connections, each having sent its request; nothing read yet."""
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []

    async def one(user: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", system.http_port)
        writer.write(f"GET /api/v1/users/{user}/coupons/{coupon_id}/{path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
        writers.append(writer)
        readers.append(reader)

    for start in range(1, clients + 1, 250):
        await asyncio.gather(*(one(u) for u in range(start, min(start + 250, clients + 1))))
    return readers, writers


async def answered(readers: list[asyncio.StreamReader], marker: bytes, done: list[int]) -> None:
    async def one(reader: asyncio.StreamReader) -> None:
        await reader.readuntil(marker)
        done[0] += 1

    await asyncio.gather(*(one(r) for r in readers))


async def scenario(system: System, kind: str, path: str, marker: bytes, clients: int, idle_s: float) -> Figures:
    pid = system.processes["api"].pid
    coupon_id = await seed(system, clients)
    before = rss_mb(pid)
    readers, writers = await hold(system, coupon_id, clients, path)
    await eventually(lambda: waiting(system, kind), lambda n: n >= clients, timeout=60, what=f"{clients} waiting")
    during = rss_mb(pid)
    cpu_before, started = cpu_s(pid), time.monotonic()
    await asyncio.sleep(idle_s)  # the idle window being measured
    cpu_idle, window = cpu_s(pid) - cpu_before, time.monotonic() - started
    conn = await asyncpg.connect(system.database_url)
    try:
        decided = time.monotonic()
        await conn.execute(
            "UPDATE coupon_requests SET status = 'ISSUED', decided_at = now() WHERE coupon_id = $1", coupon_id
        )
    finally:
        await conn.close()
    done = [0]
    try:
        await asyncio.wait_for(answered(readers, marker, done), 60)
        answered_all: float | None = time.monotonic() - decided
    except TimeoutError:
        answered_all = None
        print(f"{kind}: {done[0]} of {clients} answered within 60 s; still waiting: {await waiting(system, kind)}")
    for writer in writers:
        writer.close()
    return Figures(
        kind=kind,
        clients=clients,
        rss_before_mb=round(before, 1),
        rss_waiting_mb=round(during, 1),
        per_client_kb=round((during - before) * 1024 / clients, 2),
        idle_window_s=round(window, 2),
        idle_cpu_s=round(cpu_idle, 3),
        idle_cpu_percent=round(100 * cpu_idle / window, 2),
        answered_all_s=None if answered_all is None else round(answered_all, 3),
    )


async def run(clients: int, idle_s: float, pg_base: str, log_dir: Path) -> dict[str, object]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the API process inherits it
    if hard < clients + 1000:
        raise SystemExit(f"open files limit {hard} is too low for {clients} clients")
    sandbox = Sandbox(ScratchDatabases(pg_base, run_prefix("cbwait_")), log_dir=log_dir)
    try:
        system = await sandbox.start_system("waiters", roles=("api",))
        long_poll = await scenario(system, "long_poll", "request?wait=30", b'"ISSUED"', clients, idle_s)
        stream = await scenario(system, "stream", "request/events", b'"ISSUED"', clients, max(idle_s, 16.0))
    finally:
        await sandbox.close()
    return {
        "registry_bytes_per_waiter": round(await registry_cost(clients), 1),
        "long_poll": asdict(long_poll),
        "stream": asdict(stream),
    }
