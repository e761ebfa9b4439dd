"""One harness for couponrush's end-to-end tests, its chaos suite and the benchmark: the whole system as
real processes (``couponrush migrate``, ``api``, ``relay``, ``worker``, or another design's in their
place), each system on state of its own: a database named with the run's prefix, a Redis database of
a server the run owns, a fresh embedded broker, its own HTTP port. An operator would see exactly this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
from redis.asyncio import Redis

from couponrush.dev.broker import EmbeddedBroker, free_port
from couponrush_bench.polling import eventually
from couponrush_bench.servers import OwnRedis, ScratchDatabases

ADMIN_TOKEN = "harness-admin-token"
ROLES = ("relay", "worker", "api")


def couponrush_command(role: str) -> list[str]:
    return [sys.executable, "-m", "couponrush", role]


@dataclass
class System:
    name: str
    log_dir: Path
    database_url: str
    redis_url: str
    broker: EmbeddedBroker
    extra_env: dict[str, str] = field(default_factory=dict)
    # role -> the command that runs it instead of ``python -m couponrush <role>`` (another design's process).
    commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # A Redis server that lives and dies with this system (None: the Redis belongs to someone else).
    redis_server: OwnRedis | None = None
    http_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "COUPONRUSH_DATABASE_URL": self.database_url,
            "COUPONRUSH_REDIS_URL": self.redis_url,
            "COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "COUPONRUSH_HTTP_PORT": str(self.http_port),
            "COUPONRUSH_ADMIN_TOKEN": ADMIN_TOKEN,
            "COUPONRUSH_LOG_LEVEL": "INFO",  # what production runs with
            # No fixed metrics ports: systems run side by side (a test that wants them sets free ports).
            "COUPONRUSH_RELAY_METRICS_PORT": "0",
            "COUPONRUSH_WORKER_METRICS_PORT": "0",
            **self.extra_env,
        }

    async def boot(self, roles: Sequence[str] = ROLES) -> None:
        """Start the broker, apply the schema (creating the database, as an operator would), start ``roles``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        await asyncio.to_thread(self.run, "migrate")
        for role in roles:
            self.start(role)
        if "api" in roles:
            await self.wait_ready()
        if "worker" in roles:
            await self.wait_worker_assigned()

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """A ``couponrush`` command against this system, to completion."""
        # "cli" in ``commands``: another design's (or checkout's) command line instead of ours.
        command = list(self.commands.get("cli", [sys.executable, "-m", "couponrush"]))
        return subprocess.run([*command, *args], env=self.env, capture_output=True, timeout=60, check=True)

    def start(
        self, role: str, *, name: str | None = None, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        """Start one role's process; ``name`` tells apart several processes of one role."""
        key = name or role
        log = self.logs[key] = self.log_path(key).open("ab")
        command = list(self.commands.get(role, couponrush_command(role)))
        self.processes[key] = subprocess.Popen(
            [*command, *args], env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{self.name}-{name}.log"

    def log_of(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def worker_assignments(self, name: str = "worker") -> int:
        return self.log_of(name).count("assigned partitions")

    def last_assignment(self, name: str = "worker") -> list[str]:
        """The partitions (``topic[n]``) the worker's latest assignment gave it: each assignment lists all it holds."""
        lines = [line for line in self.log_of(name).splitlines() if "assigned partitions:" in line]
        if not lines:
            return []
        listed = lines[-1].split("assigned partitions:", 1)[1].split('"', 1)[0]
        return [p.strip() for p in listed.split(",") if "[" in p]

    async def wait_worker_assigned(self, times: int = 1, *, name: str = "worker") -> None:
        """Wait until the worker got partitions ``times`` times (its log is appended across restarts).

        Stopping a worker before it joined its group stalls Tansu's group for minutes (docs/OPERATIONS.md),
        so whoever stops workers first waits for this.
        """

        async def assignments() -> int:
            return self.worker_assignments(name)

        await eventually(assignments, lambda n: n >= times, timeout=30, what=f"{name} assigned {times} time(s)")

    async def wait_ready(self, base_url: str | None = None) -> None:
        await wait_ready(base_url or self.base_url)

    async def start_second_api(self) -> str:
        """Another API process on its own port, sharing everything else; returns its base URL."""
        port = free_port()
        self.start("api", name="api2", env={"COUPONRUSH_HTTP_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url)
        return url

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Stop one process; its exit code (-999: it had to be SIGKILLed after ``timeout``)."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(sig)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout)
            code = -999 if code == 0 else code
        self.exit_codes[name] = code
        self.logs.pop(name).close()
        return code

    def shutdown(self) -> dict[str, int]:
        """Stop every process (SIGTERM), the broker and a Redis server of its own; every exit code."""
        for name in list(self.processes):
            self.stop(name)
        self.broker.stop()
        if self.redis_server is not None:
            self.redis_server.stop()
        return self.exit_codes

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)


async def wait_ready(base_url: str, timeout: float = 30) -> None:
    """Until the API answers ready: PostgreSQL (schema current), Redis and Kafka all answer."""
    async with httpx.AsyncClient(base_url=base_url) as client:

        async def ready() -> int:
            try:
                return (await client.get("/health/ready")).status_code
            except httpx.HTTPError:
                return 0

        await eventually(ready, lambda s: s == 200, timeout=timeout, what=f"the API at {base_url} answering ready")


@dataclass
class Sandbox:
    """Where one run's systems get their state, and the promise that it is all gone afterwards.

    Databases are this run's (``databases``); Redis is a database of ``redis`` (a server the run owns)
    per system, or, without one, a ``redis-server`` of the system's own. ``close`` stops what is still
    running and drops every database of the run.
    """

    databases: ScratchDatabases
    log_dir: Path
    redis: OwnRedis | None = None
    systems: list[System] = field(default_factory=list)
    _next_redis_db: int = 1  # database 0 of a shared server is left to in-process tests

    async def start_system(
        self,
        name: str,
        *,
        extra_env: dict[str, str] | None = None,
        commands: Mapping[str, Sequence[str]] | None = None,
        roles: Sequence[str] = ROLES,
        redis_url: str | None = None,
    ) -> System:
        """A system on fresh state, booted with ``roles``; its database is ``name`` (see ``database_url``)."""
        if any(running.name == name for running in self.systems):
            raise ValueError(f"a system named {name!r} is running already (the name is its database's)")
        own: OwnRedis | None = None
        if redis_url is None:
            if self.redis is not None:
                redis_url = self.redis.url(self._next_redis_db)
                self._next_redis_db += 1
            else:
                own = OwnRedis(log_dir=self.log_dir / f"{name}-redis")
                await own.start()
                redis_url = own.url(0)
        system = System(
            name=name,
            log_dir=self.log_dir,
            database_url=self.database_url(name),
            redis_url=redis_url,
            broker=EmbeddedBroker(port=free_port(), log_path=self.log_dir / f"{name}-broker.log"),
            extra_env=extra_env or {},
            commands=commands or {},
            redis_server=own,
        )
        self.systems.append(system)
        try:
            await system.boot(roles)
        except BaseException:
            await self.stop_system(system)
            raise
        return system

    def database_url(self, name: str) -> str:
        return self.databases.url(name)

    async def stop_system(self, system: System) -> dict[str, int]:
        """Stop it (see ``System.shutdown``) and drop its database; every exit code."""
        try:
            codes = await asyncio.to_thread(system.shutdown)
        finally:
            if system in self.systems:
                self.systems.remove(system)
            await self.databases.drop(system.name)
        return codes

    async def close(self) -> list[str]:
        """Stop every system still running, drop every database of the run; the databases dropped here."""
        for system in list(self.systems):
            with contextlib.suppress(Exception):
                await self.stop_system(system)
        return await self.databases.drop_all()


def kafka_partition(key: str, partitions: int) -> int:
    """The partition a keyed record lands on: Kafka's Java partitioner (murmur2), which the relay's producer
    uses too (``murmur2_random``). A coupon's requests are keyed by its id: one partition holds a whole drop."""
    data = key.encode()
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little") * m & 0xFFFFFFFF
        k = (k ^ (k >> 24)) * m & 0xFFFFFFFF
        h = (h * m & 0xFFFFFFFF) ^ k
    tail = data[length - length % 4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = (h ^ tail[0]) * m & 0xFFFFFFFF
    h = (h ^ (h >> 13)) * m & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def coupon_body(
    quantity: int, *, expires_in: timedelta = timedelta(days=1), status: str = "PUBLISHABLE", name: str = "선착순 쿠폰"
) -> dict[str, Any]:
    return {
        "name": name,
        "discountRate": 0.1,
        "quantity": quantity,
        "status": status,
        "expiredAt": (datetime.now(UTC) + expires_in).isoformat(),
    }


async def create_coupon(
    client: httpx.AsyncClient, quantity: int, *, admin_token: str = ADMIN_TOKEN, **kwargs: Any
) -> int:
    """Create a coupon through the admin API (open at once unless ``status`` says otherwise); its id."""
    response = await client.post(
        "/api/v1/coupons", json=coupon_body(quantity, **kwargs), headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert response.status_code == 201, response.text
    coupon_id: int = response.json()["data"]["id"]
    return coupon_id
