"""Observability of the running system: /metrics moves by what a drop did, health of every role,
a request id from the HTTP answer to the worker's log line, several API processes, the operator CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from couponrush.dev.broker import free_port
from couponrush_bench.harness import Sandbox, System, create_coupon
from couponrush_bench.invariants import settle
from couponrush_bench.polling import eventually
from tests.support.drop import run_drop
from tests.support.kafka import find_record

REQUESTED = "outside.coupon.publish.requested.v1"
PUBLISHED = "outside.coupon.published.v1"
PUBLISH_ROUTE = "/api/v1/users/{userId}/coupons/publish"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
async def system(sandbox: Sandbox) -> AsyncIterator[System]:
    """This module's own system: its relay and worker serve metrics on known ports; the worker logs at DEBUG."""
    running = await sandbox.start_system(
        "obs",
        extra_env={
            "COUPONRUSH_RELAY_METRICS_PORT": str(free_port()),
            "COUPONRUSH_WORKER_METRICS_PORT": str(free_port()),
            "COUPONRUSH_LOG_LEVEL": "DEBUG",
        },
    )
    yield running
    codes = await sandbox.stop_system(running)
    assert {role: codes[role] for role in ("relay", "worker", "api")} == {"relay": 0, "worker": 0, "api": 0}, codes


def endpoint(system: System, role: str) -> str:
    return f"http://127.0.0.1:{system.extra_env[f'COUPONRUSH_{role.upper()}_METRICS_PORT']}"


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture
async def client(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
        yield http


async def test_metrics_move_by_exactly_what_a_drop_did(system: System, client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, quantity=20)
    api0, relay0, worker0 = (
        await scrape(system.base_url),
        await scrape(endpoint(system, "relay")),
        await scrape(endpoint(system, "worker")),
    )
    users = [5000 + n for n in range(30)] + [5000 + n for n in range(10)]  # 30 users, 10 of them tap twice

    answers = await run_drop([system.base_url], coupon_id, users, concurrency=20)

    sent = Counter(
        ("accepted", "OK") if a.status == 200 else ("refused", a.reason or "") for a in answers if a.status != 503
    )
    assert sent[("accepted", "OK")] == 20
    api1 = await scrape(system.base_url)
    for (outcome, reason), count in sent.items():
        moved = value(api1, "couponrush_publish_requests_total", outcome=outcome, reason=reason) - value(
            api0, "couponrush_publish_requests_total", outcome=outcome, reason=reason
        )
        assert moved == count, (outcome, reason)
    gate_checks = total(api1, "couponrush_gate_admit_seconds_count") - total(
        api0, "couponrush_gate_admit_seconds_count"
    )
    assert gate_checks == len(answers)
    ok_answers = value(
        api1, "couponrush_http_requests_total", method="POST", route=PUBLISH_ROUTE, status="200"
    ) - value(api0, "couponrush_http_requests_total", method="POST", route=PUBLISH_ROUTE, status="200")
    assert ok_answers == 20

    assert len((await settle(system.database_url, coupon_id)).holders) == 20

    async def worker_moved() -> tuple[float, float]:
        now = await scrape(endpoint(system, "worker"))
        return (
            value(now, "couponrush_issue_decisions_total", status="ISSUED", reason="OK")
            - value(worker0, "couponrush_issue_decisions_total", status="ISSUED", reason="OK"),
            value(now, "couponrush_time_to_issue_seconds_count")
            - value(worker0, "couponrush_time_to_issue_seconds_count"),
        )

    await eventually(worker_moved, lambda moved: moved == (20, 20), timeout=15, what="worker metrics moved by 20")
    worker1 = await scrape(endpoint(system, "worker"))
    assert value(worker1, "couponrush_issue_batch_size_count") > value(worker0, "couponrush_issue_batch_size_count")
    assert total(worker1, "couponrush_issue_batch_size_sum") - total(worker0, "couponrush_issue_batch_size_sum") >= 20
    lag = await eventually(
        lambda: scrape(endpoint(system, "worker")),
        lambda s: (
            total(s, "couponrush_consumer_lag", topic=REQUESTED) == 0
            and len([k for k in s if k[0] == "couponrush_consumer_lag"]) == 3
        ),
        timeout=15,
        what="lag of 0 on each of the 3 partitions",
    )
    assert {dict(k[1])["partition"] for k in lag if k[0] == "couponrush_consumer_lag"} == {"0", "1", "2"}

    async def relayed() -> tuple[float, float]:
        now = await scrape(endpoint(system, "relay"))
        return (
            value(now, "couponrush_relay_sent_total", topic=REQUESTED)
            - value(relay0, "couponrush_relay_sent_total", topic=REQUESTED),
            value(now, "couponrush_relay_sent_total", topic=PUBLISHED)
            - value(relay0, "couponrush_relay_sent_total", topic=PUBLISHED),
        )

    await eventually(relayed, lambda moved: moved == (20, 20), timeout=15, what="relay sent 20 requests, 20 issues")
    settled = await eventually(
        lambda: scrape(system.base_url),
        lambda s: value(s, "couponrush_outbox_backlog") == 0,
        timeout=15,
        what="outbox drained",
    )
    assert value(settled, "couponrush_coupon_remaining", coupon_id=str(coupon_id)) == 0
    assert value(settled, "couponrush_coupon_pending", coupon_id=str(coupon_id)) == 0
    assert value(settled, "couponrush_outbox_oldest_age_seconds") == 0
    # Kept for the operations notes: what an operator sees after a small drop.
    excerpt = [
        f"{name}{{{','.join(f'{k}={v!r}' for k, v in sorted(labels))}}} {v:g}"
        for source in (settled, worker1, await scrape(endpoint(system, "relay")))
        for (name, labels), v in sorted(source.items(), key=lambda kv: kv[0][0])
        if name.startswith("couponrush_") and not name.endswith("_bucket") and "http_" not in name
    ]
    (system.log_dir / "metrics-excerpt.txt").write_text("\n".join(excerpt) + "\n")


async def test_every_role_is_live_and_ready_and_an_api_without_kafka_is_not_ready(
    system: System, client: httpx.AsyncClient
) -> None:
    ready = await client.get("/health/ready")
    assert (ready.status_code, ready.json()["data"]) == (200, {"postgres": "UP", "redis": "UP", "kafka": "UP"})
    async with httpx.AsyncClient(timeout=10) as http:
        for role in ("relay", "worker"):
            assert (await http.get(f"{endpoint(system, role)}/health/live")).status_code == 200
            answer = await http.get(f"{endpoint(system, role)}/health/ready")
            assert (answer.status_code, answer.json()["data"]["kafka"]) == (200, "UP"), role

        port = free_port()
        system.start(
            "api",
            name="api-no-kafka",
            env={"COUPONRUSH_HTTP_PORT": str(port), "COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
        )
        url = f"http://127.0.0.1:{port}"

        async def live() -> int:
            try:
                return (await http.get(f"{url}/health/live")).status_code
            except httpx.HTTPError:
                return 0

        await eventually(live, lambda s: s == 200, timeout=30, what="the second API live")
        answer = await http.get(f"{url}/health/ready")
        assert answer.status_code == 503
        checks = answer.json()["data"]
        assert (checks["postgres"], checks["redis"]) == ("UP", "UP")
        assert checks["kafka"].startswith("DOWN")
    assert system.stop("api-no-kafka") == 0


async def test_the_request_id_goes_from_the_http_answer_through_outbox_and_kafka_into_the_worker_log(
    system: System, client: httpx.AsyncClient
) -> None:
    coupon_id = await create_coupon(client, quantity=1)
    response = await client.post("/api/v1/users/77/coupons/publish", json={"couponId": coupon_id})
    assert response.status_code == 200
    request_id = response.json()["data"]["requestId"]
    assert response.headers["x-request-id"] == request_id

    conn = await system.db()
    try:
        # The request's row is its event's outbox entry, under the id the client was given.
        recorded = await conn.fetchval("SELECT user_id FROM coupon_requests WHERE request_id = $1", request_id)
    finally:
        await conn.close()
    assert recorded == 77
    record = await find_record(
        system.broker.bootstrap, REQUESTED, lambda r: r.value is not None and request_id.encode() in r.value
    )
    assert record.headers["request-id"] == request_id.encode()

    def worker_lines() -> list[dict[str, object]]:
        lines = []
        for raw in system.log_of("worker").splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return lines

    async def lines_of_request() -> list[dict[str, object]]:
        return [line for line in worker_lines() if line.get("request_id") == request_id]

    found = await eventually(lines_of_request, bool, timeout=15, what="a worker log line with the request id")
    assert found[0]["role"] == "worker"
    assert f"coupon {coupon_id} to user 77" in str(found[0]["msg"])


async def test_two_api_processes_report_summed_counters_and_clean_up(system: System, client: httpx.AsyncClient) -> None:
    coupon_id = await create_coupon(client, quantity=1000)
    port = free_port()
    system.start("api", name="api-multi", env={"COUPONRUSH_HTTP_PORT": str(port)}, args=("--workers", "2"))
    url = f"http://127.0.0.1:{port}"
    await eventually(
        lambda: _status(f"{url}/health/ready"), lambda s: s == 200, timeout=30, what="the 2-process API ready"
    )
    # A fresh connection per request, so the kernel spreads them over both processes.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=fresh) as http:
        for user in range(8000, 8040):
            answer = await http.post(f"/api/v1/users/{user}/coupons/publish", json={"couponId": coupon_id})
            assert answer.status_code == 200

        async def accepted() -> float:
            return value(await scrape(url), "couponrush_publish_requests_total", outcome="accepted", reason="OK")

        # Each process writes its counts at the latest 0.1 s after counting (metrics.Tally): then every
        # scrape, whichever process serves it, sums both.
        await eventually(accepted, lambda n: n == 40.0, timeout=5, what="both processes' counts written")
        sums = [await accepted() for _ in range(6)]
    assert sums == [40.0] * 6
    directory = Path(system.log_of("api-multi").split("summed in ", 1)[1].split(" ", 1)[0])
    pids, exists = _metric_files(directory)
    assert exists
    assert len(pids) >= 2, pids  # both worker processes wrote their own counters
    assert system.stop("api-multi") == 0
    assert _metric_files(directory) == (set(), False)  # the run's directory is gone


def _metric_files(directory: Path) -> tuple[set[str], bool]:
    return {p.name.split("_", 1)[1] for p in directory.glob("counter_*.db")}, directory.exists()


async def _status(url: str) -> int:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(url)).status_code
    except httpx.HTTPError:
        return 0


def cli(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "couponrush", *args], env=system.env, capture_output=True, text=True, timeout=60
    )


async def test_operators_manage_coupons_and_watch_a_drop_from_the_cli(
    system: System, client: httpx.AsyncClient
) -> None:
    created = cli(
        system, "coupons", "create", "--name", "cli coupon", "--quantity", "3", "--expires-in", "1d", "--json"
    )
    assert created.returncode == 0, created.stderr
    [coupon] = json.loads(created.stdout)
    assert (coupon["name"], coupon["quantity"], coupon["status"]) == ("cli coupon", 3, "PUBLISHABLE")
    coupon_id = coupon["id"]
    # It opened at once: the gate admits.
    assert (await client.post("/api/v1/users/91/coupons/publish", json={"couponId": coupon_id})).status_code == 200
    # Issued before the close: a request still pending when its coupon closes is refused NOT_OPEN.
    await settle(system.database_url, coupon_id)

    closed = cli(system, "coupons", "close", str(coupon_id), "--json")
    assert json.loads(closed.stdout)[0]["status"] == "UNPUBLISHABLE"
    refused = await client.post("/api/v1/users/92/coupons/publish", json={"couponId": coupon_id})
    assert (refused.status_code, refused.json()["data"]["reason"]) == (409, "NOT_OPEN")
    assert json.loads(cli(system, "coupons", "open", str(coupon_id), "--json").stdout)[0]["status"] == "PUBLISHABLE"
    assert (await client.post("/api/v1/users/92/coupons/publish", json={"couponId": coupon_id})).status_code == 200

    await settle(system.database_url, coupon_id)
    shown = json.loads(cli(system, "coupons", "show", str(coupon_id), "--json").stdout)
    assert (shown["issuedCount"], shown["remainingQuantity"], shown["pending"]) == (2, 1, 0)
    listed = json.loads(cli(system, "coupons", "list", "--json").stdout)
    assert coupon_id in [c["id"] for c in listed]
    assert "cli coupon" in cli(system, "coupons", "list").stdout  # the Rich table

    stats = cli(system, "stats", str(coupon_id), "--iterations", "2", "--interval", "0.2", "--json")
    assert stats.returncode == 0, stats.stderr
    lines = [json.loads(line) for line in stats.stdout.splitlines()]
    assert len(lines) == 2
    assert {k: lines[-1][k] for k in ("stock", "issued", "pending", "lag")} == {
        "stock": 1,
        "issued": 2,
        "pending": 0,
        "lag": 0,
    }
    assert "issuedPerSecond" in lines[-1]
    assert "stock" in cli(system, "stats", str(coupon_id), "--once").stdout

    missing = cli(system, "coupons", "show", "999999")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    invalid = cli(system, "coupons", "create", "--name", "x", "--quantity", "0", "--expires-in", "1d")
    assert invalid.returncode == 2
