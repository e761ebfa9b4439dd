"""Load from a C generator (``wrk``, Debian package) and CPU per request per stage from /proc.

Every publish request carries its own user (or a user from a fixed crowd), written by a Lua script, so
the generator costs a few microseconds per request. Outcomes (accepted, refused by reason, 503) are
read from the API's own counters before and after (``/metrics``), not parsed by wrk (a Lua response
callback would cost the generator more than the request it measures).

CPU is charged to stages: each role's process tree, the system's broker and redis-server, the
PostgreSQL backends by ``application_name`` (each role names its sessions ``couponrush-<role>``;
``wal writer`` and other server processes are "postgres (server)"), and wrk itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from couponrush_bench.harness import System
from couponrush_bench.measure import _proc_table, _tree_cpu

LUA = r"""
local coupon = os.getenv("WRK_COUPON_ID")
local base = tonumber(os.getenv("WRK_USER_BASE") or "1")
local crowd = tonumber(os.getenv("WRK_CROWD") or "0")      -- 0: every request a new user
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "0")   -- per connection, between requests
local body = '{"couponId":' .. coupon .. '}'
local headers = {["Content-Type"] = "application/json"}
local threads = 0
local n = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function request()
  n = n + 1
  local user
  if crowd > 0 then
    user = base + ((n * 7919 + tid * 104729) % crowd)
  else
    user = base + tid * 100000000 + n
  end
  return wrk.format("POST", "/api/v1/users/" .. user .. "/coupons/publish", headers, body)
end

if pause > 0 then
  function delay() return pause end
end
"""

_UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    latency_us: dict[str, float]  # "50", "75", "90", "99" -> microseconds
    socket_errors: int
    cpu_s: float  # the generator's own CPU

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_wrk(output: str, cpu_s: float) -> WrkResult:
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", output).group(1))  # type: ignore[union-attr]
    match = re.search(r"requests in ([\d.]+)(ms|s|m)", output)
    assert match is not None, output
    seconds = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
    latency: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", output, flags=re.M):
        latency[pct] = float(value) * _UNIT_US[unit]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    return WrkResult(requests, seconds, latency, errors, cpu_s)


def run_wrk(
    url: str,
    coupon_id: int,
    *,
    seconds: float,
    connections: int = 64,
    threads: int = 2,
    user_base: int = 1,
    crowd: int = 0,
    delay_ms: float = 0.0,
    timeout_s: float = 5.0,
) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA)
    env = {
        **os.environ,
        "WRK_COUPON_ID": str(coupon_id),
        "WRK_USER_BASE": str(user_base),
        "WRK_CROWD": str(crowd),
        "WRK_DELAY_MS": str(delay_ms),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds:g}s",
                f"--timeout={timeout_s:g}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_wrk(done.stdout, cpu)


@dataclass
class StageCpu:
    """CPU seconds used so far by each stage of a running system."""

    system: System
    database_url: str
    seen: dict[str, float] = field(default_factory=dict)

    async def snapshot(self) -> dict[str, float]:
        table = _proc_table()
        result: dict[str, float] = {}
        for name, process in self.system.processes.items():
            result[name] = _tree_cpu(table, process.pid)
        if self.system.broker.pid is not None:
            result["broker"] = _tree_cpu(table, self.system.broker.pid)
        redis = self.system.redis_server
        if redis is not None and redis.pid is not None:
            result["redis"] = _tree_cpu(table, redis.pid)
        for pid, application in (await self._backends()).items():
            role = application.removeprefix("couponrush-") if application.startswith("couponrush-") else "other"
            result[f"pg:{role}"] = result.get(f"pg:{role}", 0.0) + table.get(pid, (0, "", 0.0))[2]
        result["pg:server"] = sum(table.get(pid, (0, "", 0.0))[2] for pid in _postgres_server_processes())
        return result

    async def _backends(self) -> dict[int, str]:
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch(
                "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        return {int(r["pid"]): str(r["application_name"] or "") for r in rows}


_SERVER_PROCESS = re.compile(
    rb"^postgres: [^:]+: (walwriter|checkpointer|background writer|autovacuum|logical rep|stats)"
)


def _postgres_server_processes() -> list[int]:
    """The server's own processes (WAL writer, checkpointer...), not the backends of other databases' clients."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _SERVER_PROCESS.match((entry / "cmdline").read_bytes()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: max(0.0, after.get(k, 0.0) - before.get(k, 0.0)) for k in after}


async def publish_counts(base_url: str) -> dict[str, float]:
    """``couponrush_publish_requests_total`` by ``outcome/reason``, summed over every API process."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    counts: dict[str, float] = {}
    for outcome, reason, value in re.findall(
        r'^couponrush_publish_requests_total\{outcome="(\w+)",reason="(\w+)"\} ([\d.e+]+)$', text, flags=re.M
    ):
        counts[f"{outcome}/{reason}"] = float(value)
    return counts


async def wait_decided(database_url: str, coupon_id: int, timeout_s: float = 120.0) -> float:
    """Seconds until no accepted request of the coupon is pending."""
    started = time.monotonic()
    conn = await asyncpg.connect(database_url)
    try:
        while time.monotonic() - started < timeout_s:
            pending = await conn.fetchval(
                "SELECT count(*) FROM coupon_requests WHERE coupon_id = $1 AND status = 'PENDING'", coupon_id
            )
            if pending == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise TimeoutError(f"coupon {coupon_id}: requests still pending after {timeout_s}s")
