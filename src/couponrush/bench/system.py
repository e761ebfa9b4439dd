"""The system under test as real processes, started fresh for each measured run.

Each run gets a fresh embedded broker (Tansu keeps every record in memory and slows as a topic
grows, so reusing one would skew later runs), a re-created database and a flushed Redis
database. The roles are the same ``couponrush`` processes an operator runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis

from couponrush.adapters.db import normalize_dsn
from couponrush.dev.broker import EmbeddedBroker, free_port, port_open

BENCH_ADMIN_TOKEN = "bench-admin-token"


def _database(url: str, name: str) -> str:
    parts = urlsplit(normalize_dsn(url))
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@dataclass
class BenchSystem:
    database_url: str
    redis_url: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    api_workers: int = 1
    http_port: int = field(default_factory=free_port)
    relay_metrics_port: int = field(default_factory=free_port)
    worker_metrics_port: int = field(default_factory=free_port)
    broker: EmbeddedBroker | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    @property
    def full_env(self) -> dict[str, str]:
        assert self.broker is not None
        return {
            **os.environ,
            "COUPONRUSH_DATABASE_URL": self.database_url,
            "COUPONRUSH_REDIS_URL": self.redis_url,
            "COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "COUPONRUSH_HTTP_PORT": str(self.http_port),
            "COUPONRUSH_ADMIN_TOKEN": BENCH_ADMIN_TOKEN,
            "COUPONRUSH_LOG_LEVEL": "INFO",  # what production runs with
            # Each run's relay and worker serve metrics on a free port (several systems never clash).
            "COUPONRUSH_RELAY_METRICS_PORT": str(self.relay_metrics_port),
            "COUPONRUSH_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            **self.env,
        }

    async def start(self, roles: Sequence[str] = ("relay", "worker", "api")) -> None:
        await self._reset_state()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(port=free_port(), log_path=self.log_dir / "broker.log")
        self.broker.start()
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "couponrush", "migrate", env=self.full_env, stdout=asyncio.subprocess.DEVNULL
        )
        if await migrate.wait() != 0:
            raise RuntimeError("couponrush migrate failed")
        for role in roles:
            self.start_role(role)
        if "api" in roles:
            await self.wait_for(lambda: port_open("127.0.0.1", self.http_port), 30, "the API listening")
        if "worker" in roles:
            await self.wait_worker_joined()

    def start_role(self, role: str) -> None:
        args = [sys.executable, "-m", "couponrush", role]
        if role == "api":
            args += ["--workers", str(self.api_workers)]
        log = self._logs[role] = (self.log_dir / f"{role}.log").open("ab")
        self.processes[role] = subprocess.Popen(args, env=self.full_env, stdout=log, stderr=subprocess.STDOUT)

    async def wait_worker_joined(self) -> None:
        log = self.log_dir / "worker.log"
        await self.wait_for(
            lambda: log.exists() and "assigned partitions" in log.read_text(errors="replace"),
            30,
            "the worker joining its group",
        )

    @staticmethod
    async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def _reset_state(self) -> None:
        name = urlsplit(normalize_dsn(self.database_url)).path.lstrip("/")
        admin = await asyncpg.connect(_database(self.database_url, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        redis = Redis.from_url(self.redis_url)
        try:
            await redis.flushdb()
        finally:
            await redis.aclose()

    def stop_role(self, role: str, timeout: float = 20.0) -> int:
        process = self.processes.pop(role)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout)
        self._logs.pop(role).close()
        return code

    def stop(self) -> None:
        for role in list(self.processes):
            self.stop_role(role)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds used so far) for every process we can read."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[1] is the parent pid; fields[11], fields[12] are utime, stime (in clock ticks).
        table[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def _tree_cpu(table: dict[int, tuple[int, str, float]], root: int) -> float:
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][2]
            stack.extend(child for child, (parent, _, _) in table.items() if parent == pid)
    return total


def cpu_snapshot(system: BenchSystem) -> dict[str, float]:
    """CPU seconds used so far by each part of the system under test, and by this process (the generator).

    Taken before and after a load, the differences say which stage spent the shared cores. PostgreSQL and
    Redis are the machine's shared servers: all their processes are counted (the bench is alone on them).
    """
    table = _proc_table()
    result = {role: _tree_cpu(table, process.pid) for role, process in system.processes.items()}
    if system.broker is not None and system.broker.pid is not None:
        result["broker"] = _tree_cpu(table, system.broker.pid)
    result["postgres"] = sum(cpu for _, name, cpu in table.values() if name == "postgres")
    result["redis"] = sum(cpu for _, name, cpu in table.values() if name.startswith("redis-server"))
    result["generator"] = table.get(os.getpid(), (0, "", 0.0))[2]
    return result
