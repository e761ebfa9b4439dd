"""``couponrush dev``: the whole system on one machine, whatever is missing started embedded.

PostgreSQL and Redis: the configured URLs if set; else 127.0.0.1 on the given ports, started
embedded (the ``embedded`` extra's wheels) when nothing answers there. The Kafka-protocol broker:
``COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS`` if set; else the embedded one on ``broker_port``. Then
``migrate``, and ``relay``, ``worker``, ``api`` as child processes, supervised: one exiting stops
everything. Every message says what was started where; only what was started is stopped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from couponrush.dev.broker import EmbeddedBroker, port_open
from couponrush.dev.embedded import EmbeddedPostgres, EmbeddedRedis, RunAs, Server, reachable_data_dir, service_user

Say = Callable[[str], None]
ROLES = ("relay", "worker", "api")


class DevRefused(Exception):
    """``couponrush dev`` cannot start as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class DevOptions:
    data_dir: Path
    broker_port: int
    postgres_port: int
    redis_port: int
    # Measured fastest on 2 cores (BENCHMARKS.md): one API process, relay and worker at the API's priority.
    api_workers: int = 1
    background_nice: int = 0


@dataclass
class DevSystem:
    options: DevOptions
    environ: dict[str, str]
    say: Say
    servers: list[Server] = field(default_factory=list)
    broker: EmbeddedBroker | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _user: list[RunAs | None] = field(default_factory=list)

    def _run_as(self) -> RunAs | None:
        if not self._user:
            self._user.append(service_user())
        return self._user[0]

    def check(self) -> None:
        """Refuse at once (before starting anything) what cannot work."""
        if not self.environ.get("COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS") and port_open(
            "127.0.0.1", self.options.broker_port
        ):
            raise DevRefused(
                f"port {self.options.broker_port} is taken, so the embedded broker cannot start there: pass "
                '--broker-port (make run ARGS="--broker-port 19092"), or set COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS '
                "to a broker you run"
            )

    def start_services(self) -> None:
        self._ensure("COUPONRUSH_DATABASE_URL", self.options.postgres_port, EmbeddedPostgres, "postgres")
        self._ensure("COUPONRUSH_REDIS_URL", self.options.redis_port, EmbeddedRedis, "redis")
        if not self.environ.get("COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS"):
            self.broker = EmbeddedBroker(port=self.options.broker_port, log_path=self.options.data_dir / "broker.log")
            self.broker.start()
            self.environ["COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS"] = self.broker.bootstrap
            self.say(f"started the embedded Kafka-protocol broker (Tansu) on {self.broker.bootstrap}")
        if not self.environ.get("COUPONRUSH_ADMIN_TOKEN"):
            token = secrets.token_urlsafe(24)
            self.environ["COUPONRUSH_ADMIN_TOKEN"] = token
            self.say(f"COUPONRUSH_ADMIN_TOKEN was not set; for this run it is: {token}")

    def _ensure(self, variable: str, port: int, kind: type[EmbeddedPostgres] | type[EmbeddedRedis], what: str) -> None:
        """``variable`` if set; else the server on 127.0.0.1:``port``, started embedded if none answers."""
        if variable in self.environ:
            return
        default = (
            f"postgresql://postgres@127.0.0.1:{port}/couponrush"
            if what == "postgres"
            else f"redis://127.0.0.1:{port}/0"
        )
        self.environ[variable] = default
        if port_open("127.0.0.1", port):
            return
        user = self._run_as()
        server = kind(port=port, data_dir=reachable_data_dir(self.options.data_dir / what, user), user=user)
        server.start()
        self.servers.append(server)
        self.environ[variable] = server.url()
        who = "" if user is None else f" as the unprivileged user {user.name} (we are root; PostgreSQL refuses root)"
        self.say(
            f"no {what} answered on 127.0.0.1:{port}: started the embedded {server.label} there, "
            f"pid {server.pid}{who}, data in {server.data_dir}"
        )

    def migrate(self) -> int:
        return subprocess.run([sys.executable, "-m", "couponrush", "migrate"], env=self.environ, check=False).returncode

    def start_roles(self) -> None:
        for role in ROLES:
            extra = ["--workers", str(self.options.api_workers)] if role == "api" else []
            child = subprocess.Popen([sys.executable, "-m", "couponrush", role, *extra], env=self.environ)
            if role != "api" and self.options.background_nice:
                # The relay and worker catch up after a burst; the API answers the burst.
                os.setpriority(os.PRIO_PROCESS, child.pid, self.options.background_nice)
            self.children[role] = child

    def supervise(self, stopping: Callable[[], bool]) -> int:
        """Until asked to stop (0) or a role exits on its own (1)."""
        while not stopping():
            for role, child in self.children.items():
                if child.poll() is not None:
                    self.say(f"{role} exited with code {child.returncode}; stopping")
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(20)
            if child.poll() is None:
                child.kill()
        if self.broker is not None:
            self.broker.stop()
            self.say("stopped the embedded broker")
        for server in reversed(self.servers):
            server.stop()
            kept = f" (data kept in {server.data_dir})" if server.name == "postgres" else ""
            self.say(f"stopped the embedded {server.name}{kept}")


def run_dev(options: DevOptions, say: Say, http_url: str) -> int:
    """Run the whole system until SIGINT/SIGTERM; the exit code."""
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    system = DevSystem(options, dict(os.environ), say)
    system.check()
    try:
        try:
            system.start_services()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # (TimeoutError is an OSError)
            say(f"could not start an embedded service: {exc}")
            return 1
        if stopping:
            return 0
        if system.migrate() != 0:
            return 1
        system.start_roles()
        say(f"couponrush is running: API on {http_url} (docs at /docs). Ctrl-C stops everything.")
        return system.supervise(lambda: stopping)
    finally:
        system.stop()
