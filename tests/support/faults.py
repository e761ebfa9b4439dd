"""Faults to inject into real services: a Redis server of the test's own, and the PostgreSQL cluster.

Each fault acts on the instance the test points at, derived from its configuration, so the chaos
suite runs the same against the shared development services and on a clean CI machine.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from couponrush.dev.broker import free_port, port_open
from tests.support.polling import eventually


@dataclass
class OwnRedis:
    """A ``redis-server`` process owned by the test, on a free port, keeping nothing on disk.

    Killing and starting it again on the same port is exactly a Redis restart in production
    (this service runs Redis as a cache: no persistence).
    """

    port: int = field(default_factory=free_port)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chaos-redis-")))
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._spawn()

        async def listening() -> bool:
            return port_open("127.0.0.1", self.port)

        await eventually(listening, bool, timeout=10, what=f"redis-server on {self.port}")

    def _spawn(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "the chaos suite needs the redis-server binary"
        log = self._log = (self.log_dir / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.log_dir,
            start_new_session=True,
        )

    def kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def restart(self) -> None:
        self.kill()
        await self.start()


def _cluster_on_port(port: int) -> tuple[str, str]:
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        version, name, cluster_port, *_ = line.split()
        if int(cluster_port) == port:
            return version, name
    raise AssertionError(f"no local PostgreSQL cluster listens on port {port}:\n{listing}")


def restart_postgres(pg_base: str) -> None:
    """``pg_ctlcluster ... restart`` the local cluster serving ``pg_base`` (found by its port)."""
    port = urlsplit(pg_base).port or 5432
    version, name = _cluster_on_port(port)
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart"],
        check=True,
        capture_output=True,
        timeout=60,
    )
