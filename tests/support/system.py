"""The whole system as real processes (``couponrush migrate``, ``api``, ``relay``, ``worker``).

Each running system has its own database, Redis logical database, embedded broker and HTTP port,
so end-to-end tests see exactly what an operator would, and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
from redis.asyncio import Redis

from couponrush.dev.broker import EmbeddedBroker, free_port
from tests.support.polling import eventually

ADMIN_TOKEN = "e2e-admin-token"
# Where end-to-end systems keep their state; override to run two checkouts' suites side by side
# (e.g. COUPONRUSH_TEST_REDIS_BASE=redis://127.0.0.1:6380 COUPONRUSH_TEST_DB_PREFIX=wt2_).
TEST_REDIS_BASE = os.environ.get("COUPONRUSH_TEST_REDIS_BASE", "redis://127.0.0.1:6379")
TEST_DB_PREFIX = os.environ.get("COUPONRUSH_TEST_DB_PREFIX", "")
TEST_PG_BASE = os.environ.get("COUPONRUSH_TEST_PG_BASE", "postgresql://postgres@127.0.0.1:5432")
ROLES = ("relay", "worker", "api")


@dataclass
class RunningSystem:
    name: str
    log_dir: Path
    database_url: str
    redis_url: str
    broker: EmbeddedBroker
    extra_env: dict[str, str] = field(default_factory=dict)
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
            "COUPONRUSH_LOG_LEVEL": "INFO",
            # No fixed metrics ports: systems run side by side (a test that wants them sets free ports).
            "COUPONRUSH_RELAY_METRICS_PORT": "0",
            "COUPONRUSH_WORKER_METRICS_PORT": "0",
            **self.extra_env,
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "couponrush", *args], env=self.env, capture_output=True, timeout=60, check=True
        )

    def start(
        self, role: str, *, name: str | None = None, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        """Start one role's process; ``name`` tells apart several processes of one role."""
        key = name or role
        log = self.logs[key] = (self.log_dir / f"{self.name}-{key}.log").open("ab")
        self.processes[key] = subprocess.Popen(
            [sys.executable, "-m", "couponrush", role, *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def wait_worker_assigned(self, times: int = 1, *, name: str = "worker") -> None:
        """Wait until the worker got partitions ``times`` times (its log is appended across restarts).

        Stopping a worker before it joined its group stalls Tansu's group for minutes (docs/OPERATIONS.md),
        so tests that stop workers first wait for this.
        """

        async def assignments() -> int:
            return self.worker_assignments(name)

        await eventually(assignments, lambda n: n >= times, timeout=30, what=f"{name} assigned {times} time(s)")

    def worker_assignments(self, name: str = "worker") -> int:
        return self.log_of(name).count("assigned partitions")

    async def start_second_api(self) -> str:
        """Another API process on its own port, sharing everything else; returns its base URL."""
        port = free_port()
        self.start("api", name="api2", env={"COUPONRUSH_HTTP_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"
        await _wait_ready(url)
        return url

    def stop(self, role: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        process = self.processes.pop(role)
        if process.poll() is None:
            process.send_signal(sig)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(timeout)
            code = -999 if code == 0 else code
        self.exit_codes[role] = code
        self.logs.pop(role).close()
        return code

    def log_of(self, role: str) -> str:
        path = self.log_dir / f"{self.name}-{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_ready(self) -> None:
        await _wait_ready(self.base_url)

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)


async def _wait_ready(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:

        async def ready() -> int:
            try:
                return (await client.get("/health/ready")).status_code
            except httpx.HTTPError:
                return 0

        await eventually(ready, lambda s: s == 200, timeout=30, what=f"the API at {base_url} answering ready")


async def start_system(
    name: str,
    log_dir: Path,
    *,
    db_name: str,
    redis_db: int,
    extra_env: dict[str, str] | None = None,
    redis_base: str | None = None,
) -> RunningSystem:
    db_name = TEST_DB_PREFIX + db_name
    admin = await asyncpg.connect(f"{TEST_PG_BASE}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    finally:
        await admin.close()
    redis_url = f"{redis_base or TEST_REDIS_BASE}/{redis_db}"
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    await redis.aclose()
    broker = EmbeddedBroker(port=free_port(), log_path=log_dir / f"{name}-broker.log")
    broker.start()
    system = RunningSystem(
        name=name,
        log_dir=log_dir,
        database_url=f"{TEST_PG_BASE}/{db_name}",
        redis_url=redis_url,
        broker=broker,
        extra_env=extra_env or {},
    )
    system.run("migrate")  # creates the database and applies the schema, as an operator would
    for role in ROLES:
        system.start(role)
    await system.wait_ready()
    await system.wait_worker_assigned()
    return system


def stop_system(system: RunningSystem) -> dict[str, int]:
    for role in list(system.processes):
        system.stop(role)
    system.broker.stop()
    return system.exit_codes


def coupon_body(
    quantity: int, *, expires_in: timedelta = timedelta(days=1), status: str = "PUBLISHABLE"
) -> dict[str, Any]:
    return {
        "name": "선착순 쿠폰",
        "discountRate": 0.1,
        "quantity": quantity,
        "status": status,
        "expiredAt": (datetime.now(UTC) + expires_in).isoformat(),
    }


async def create_coupon(client: httpx.AsyncClient, quantity: int, **kwargs: Any) -> int:
    response = await client.post(
        "/api/v1/coupons", json=coupon_body(quantity, **kwargs), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 201, response.text
    coupon_id: int = response.json()["data"]["id"]
    return coupon_id


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
