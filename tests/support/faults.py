"""Faults to inject into real services: the PostgreSQL cluster (a Redis server of the test's own is
``couponrush_bench.servers.OwnRedis``, restarted with ``restart()``).

Each fault acts on the instance the test points at, derived from its configuration, so the chaos
suite runs the same against the shared development services and on a clean CI machine.
"""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit


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
