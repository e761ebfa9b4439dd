"""A storm of malformed requests beside a drop: does it slow the drop down?

The storm (oversized bodies of 1-2.6 MB, non-canonical ids such as ``+1``, ``%201``, ``1_000``, ``01``,
unknown fields, bad JSON, wrong content types) is sent by a process of its own (``python -m
couponrush_bench.storm``), one connection per request, so that neither its CPU nor its sockets share the
drop client's event loop. ``compare`` runs drops without and with it, in pairs whose order alternates,
on one running system, and reports the ratios (with / without) of the drop's duration and p99 latency,
per pair and as medians: ratios measured in one run, on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from couponrush_bench import invariants
from couponrush_bench.drops import publish_calls
from couponrush_bench.harness import System, create_coupon
from couponrush_bench.loadgen import run_load
from couponrush_bench.measure import latency_summary_ms

PATH = "/api/v1/users/{user}/coupons/publish"
# Non-canonical spellings of an id in the path: each must be refused, never read as the number.
PATH_IDS = ["+1", "%201", "1_000", "01", "%2B1", "1.0", "1e3", "0x1", "-1", "0", "99999999999999999999", "%EF%BC%91"]
# Bodies that are not exactly {"couponId": <positive integer>}; {c} is the drop's coupon.
BAD_BODIES = [
    '{{"couponId": "{c}"}}',
    '{{"couponId": {c}.0}}',
    '{{"couponId": true}}',
    '{{"couponId": 0}}',
    '{{"couponId": -{c}}}',
    '{{"couponId": 1e3}}',
    '{{"couponId": 99999999999999999999}}',
    '{{"couponId": "0{c}"}}',
    '{{"couponId": 0{c}}}',
    '{{"couponId": 1_000}}',
    '{{"couponId": {c}, "userId": 1}}',
    '{{"couponId": {c}, "extra": null}}',
    '{{"couponid": {c}}}',
    '{{"couponId":',
    '{{"couponId": {c},}}',
    "not json",
    "",
    "[]",
    "null",
    '"{{}}"',
    "[" * 5000,
]


CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=x"]
MAX_PAD = 2_600_000
_PAD = b"x" * MAX_PAD  # shared by every oversized body: the sender's CPU is not what is measured


def malformed(
    rng: random.Random, host: str, port: int, coupon_id: int, first_user: int
) -> tuple[bytes, bytes | memoryview]:
    """One malformed request, raw (head, body); the kind picked at random (about a third are oversized)."""
    user = first_user + rng.randrange(1_000_000)
    kind = rng.random()
    content_type = "application/json"
    path = PATH.format(user=user)
    body: bytes | memoryview
    if kind < 0.33:
        body = memoryview(_PAD)[: rng.randrange(1_000_000, MAX_PAD + 1)]
    else:
        if kind < 0.55:
            path = PATH.format(user=rng.choice(PATH_IDS))
            raw = b'{"couponId": %d}' % coupon_id
        elif kind < 0.9:
            raw = rng.choice(BAD_BODIES).format(c=coupon_id).encode()
        elif kind < 0.95:
            content_type = rng.choice(CONTENT_TYPES)
            raw = b'{"couponId": %d}' % coupon_id if content_type.startswith("text") else b"couponId=1"
        else:
            raw = b"\xef\xbb\xbf\xff\xfe" + b'{"couponId": %d}' % coupon_id  # a BOM, then bytes that are not UTF-8
        body = raw
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head, body


async def send_storm(
    host: str, port: int, coupon_id: int, *, count: int, concurrency: int, seed: int, first_user: int
) -> dict[str, Any]:
    """Send ``count`` malformed requests, ``concurrency`` at a time, each on a connection of its own; what came
    back (status -> count; ``reset``: the server closed before its answer could be read)."""
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    remaining = count

    async def one() -> None:
        head, body = malformed(rng, host, port, coupon_id, first_user)
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            outcomes["connect failed"] += 1
            return
        try:
            writer.write(head)
            writer.write(body)
            status = await asyncio.wait_for(reader.readline(), 30)
            outcomes[status.split(b" ")[1].decode() if status.count(b" ") >= 2 else "reset"] += 1
        except (OSError, TimeoutError):
            outcomes["reset"] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return {"requests": count, "duration_s": round(time.perf_counter() - started, 3), "outcomes": dict(outcomes)}


async def _drop(
    system: System,
    *,
    requests: int,
    users: int,
    quantity: int,
    concurrency: int,
    first_user: int,
    rng: random.Random,
    storm: dict[str, Any] | None,
) -> dict[str, Any]:
    """One drop (closed loop, the bench's lean load generator), with the storm beside it if ``storm`` says so;
    its duration (first request -> last answer or last issue, whichever is later) and latency."""
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        coupon_id = await create_coupon(client, quantity, name="storm drop")
    ids = [first_user + n for n in range(users)]
    crowd = ids + [rng.choice(ids) for _ in range(requests - users)]
    rng.shuffle(crowd)
    calls = publish_calls("127.0.0.1", system.http_port, coupon_id, crowd)
    sender: asyncio.subprocess.Process | None = None
    if storm is not None:
        sender = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "couponrush_bench.storm",
            *("--port", str(system.http_port), "--coupon", str(coupon_id), "--count", str(storm["count"])),
            *("--concurrency", str(storm["concurrency"]), "--seed", str(rng.randrange(2**31))),
            stdout=asyncio.subprocess.PIPE,
        )
    started_wall = datetime.now(UTC)
    run = await run_load("127.0.0.1", system.http_port, calls, concurrency=concurrency)
    answered_wall = datetime.now(UTC)
    storm_result: dict[str, Any] | None = None
    if sender is not None:
        out, _ = await sender.communicate()
        storm_result = json.loads(out)
    settled = await invariants.settle(system.database_url, coupon_id, 120)
    ended = max(answered_wall, settled.last_issued_at or answered_wall)
    checks = invariants.drop_checks(run.results, settled, quantity, reserving=True)
    return {
        "storm": storm_result,
        "duration_s": round((ended - started_wall).total_seconds(), 3),
        "answered_s": round(run.duration, 3),
        "latency_ms": latency_summary_ms([r.done - r.due for r in run.results]),
        "outcomes": dict(Counter(f"{r.status} {r.reason or ''}".strip() for r in run.results)),
        "connection_errors": run.errors,
        "failed_checks": invariants.failed(checks),
    }


async def compare(
    system: System,
    *,
    pairs: int = 5,
    requests: int = 10_000,
    users: int = 5_000,
    quantity: int = 1_000,
    concurrency: int = 50,
    storm_count: int = 2_000,
    storm_concurrency: int = 8,
    seed: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``pairs`` x (a drop without the storm, a drop with it), the order alternating; a warm-up drop first."""
    rng = random.Random(seed)
    storm = {"count": storm_count, "concurrency": storm_concurrency}
    shape = {"requests": requests, "users": users, "quantity": quantity, "concurrency": concurrency}
    first_user = 10_000_000
    await _drop(system, **shape, first_user=first_user, rng=rng, storm=None)  # warm-up: pools, consumer, caches
    results: list[dict[str, Any]] = []
    for pair in range(pairs):
        drops: dict[str, dict[str, Any]] = {}
        for with_storm in (False, True) if pair % 2 == 0 else (True, False):
            first_user += 10_000_000
            label = "with" if with_storm else "without"
            drops[label] = await _drop(
                system, **shape, first_user=first_user, rng=rng, storm=storm if with_storm else None
            )
            log(
                f"pair {pair + 1}/{pairs} {label} storm: {drops[label]['duration_s']} s, "
                f"p99 {drops[label]['latency_ms']['p99']} ms"
            )
        results.append(
            {
                **drops,
                "duration_ratio": round(drops["with"]["duration_s"] / drops["without"]["duration_s"], 3),
                "p99_ratio": round(drops["with"]["latency_ms"]["p99"] / drops["without"]["latency_ms"]["p99"], 3),
            }
        )
    return {
        "shape": {**shape, "storm_requests": storm_count, "storm_concurrency": storm_concurrency, "pairs": pairs},
        "median_duration_ratio": round(statistics.median(r["duration_ratio"] for r in results), 3),
        "median_p99_ratio": round(statistics.median(r["p99_ratio"] for r in results), 3),
        "pairs": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The storm's own process: send it, print what came back as JSON."""
    parser = argparse.ArgumentParser(prog="python -m couponrush_bench.storm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--coupon", type=int, required=True, help="the coupon the bodies name")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--first-user", type=int, default=900_000_000_000)
    args = parser.parse_args(argv)
    result = asyncio.run(
        send_storm(
            args.host,
            args.port,
            args.coupon,
            count=args.count,
            concurrency=args.concurrency,
            seed=args.seed,
            first_user=args.first_user,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
