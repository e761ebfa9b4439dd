#!/usr/bin/env python3
"""Container health check for every couponrush role (the image has no curl).

    couponrush-healthcheck [live|ready]      # default: live

Exit 0 when the role's endpoint answers 200 on /health/<live|ready>, 1 otherwise.

Which port: the role is taken from the container's command line (``couponrush api`` -> the API's
COUPONRUSH_HTTP_PORT, ``relay`` -> COUPONRUSH_RELAY_METRICS_PORT, ``worker`` ->
COUPONRUSH_WORKER_METRICS_PORT, defaults 8000/9101/9102, the service's own defaults). Two plain
variables override that (deliberately outside the COUPONRUSH_ prefix, which the service warns about):
HEALTHCHECK_ROLE and HEALTHCHECK_PORT. A one-shot role (migrate, reconcile, ...) or an endpoint
turned off (port 0) has nothing to probe: exit 0. A role that cannot be told: exit 1.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PORTS = {  # role -> (variable, the service's default)
    "api": ("COUPONRUSH_HTTP_PORT", 8000),
    "relay": ("COUPONRUSH_RELAY_METRICS_PORT", 9101),
    "worker": ("COUPONRUSH_WORKER_METRICS_PORT", 9102),
}
HOSTS = {"api": "COUPONRUSH_HTTP_HOST", "relay": "COUPONRUSH_METRICS_HOST", "worker": "COUPONRUSH_METRICS_HOST"}


def _role_of(argv: list[str]) -> str | None:
    """The word after the ``couponrush`` executable, e.g. ['/opt/.../couponrush', 'api', '--workers', '2']."""
    for i, arg in enumerate(argv[:-1]):
        if os.path.basename(arg) == "couponrush" or arg.endswith("/couponrush"):
            return argv[i + 1]
    return None


def _role() -> str | None:
    if os.environ.get("HEALTHCHECK_ROLE"):
        return os.environ["HEALTHCHECK_ROLE"]
    # PID 1 is the role (ENTRYPOINT ["couponrush"]), or an init (tini, docker --init) whose argv holds it.
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return _role_of([a.decode(errors="replace") for a in f.read().split(b"\0") if a])
    except OSError:
        return None


def main() -> int:
    probe = sys.argv[1] if len(sys.argv) > 1 else "live"
    if probe not in ("live", "ready"):
        print(f"usage: {sys.argv[0]} [live|ready]", file=sys.stderr)
        return 2
    role = _role()
    if os.environ.get("HEALTHCHECK_PORT"):
        port = int(os.environ["HEALTHCHECK_PORT"])
    elif role in PORTS:
        variable, default = PORTS[role]
        port = int(os.environ.get(variable) or default)
    elif role is None:
        print("cannot tell the role from PID 1's command line: set HEALTHCHECK_ROLE or HEALTHCHECK_PORT", file=sys.stderr)
        return 1
    else:
        print(f"role {role!r} serves no health endpoint: nothing to check")
        return 0
    if port == 0:
        print(f"the {role} endpoint is turned off (port 0): nothing to check")
        return 0
    host = os.environ.get(HOSTS.get(role or "", ""), "") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/health/{probe}"
    try:
        with urllib.request.urlopen(url, timeout=4) as answer:  # noqa: S310 (a fixed http URL)
            status = answer.status
    except urllib.error.HTTPError as exc:  # 503 NOT_READY lands here
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
