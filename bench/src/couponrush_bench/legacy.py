"""The design the report replaced, rebuilt for measuring: Redis decides, a batch inserts every minute.

As the report describes it: Redis's atomicity and speed carry the whole issuance (every request's
information is kept in Redis), and a batch job moves the winners into the database, "on average
one minute" late. Here: one Lua call per request adds the user to a sorted set scored by arrival
time (refusing duplicates and requests past the quantity), and every ``interval`` seconds a batch
takes what was added since and bulk-inserts it (the request row with its ``requested_at`` and the
issued coupon), so the same time-to-issue query measures both designs.

Run by ``couponrush-bench suite`` only: ``python -m couponrush_bench.legacy`` with the usual
``COUPONRUSH_DATABASE_URL`` / ``COUPONRUSH_REDIS_URL`` / ``COUPONRUSH_HTTP_PORT`` and
``COUPONRUSH_BENCH_LEGACY_INTERVAL_S``. It serves the same publish route as couponrush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import orjson
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from couponrush.adapters.db import create_pool

log = logging.getLogger("couponrush_bench.legacy")

# KEYS: queue (zset user -> arrival ms), quantity. ARGV: user, now ms.
_ENQUEUE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'ALREADY_REQUESTED' end
if redis.call('ZCARD', KEYS[1]) >= tonumber(redis.call('GET', KEYS[2]) or '0') then return 'SOLD_OUT' end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 'OK'
"""


def queue_key(coupon_id: int) -> str:
    return f"legacy:coupon:{{{coupon_id}}}:queue"


def quantity_key(coupon_id: int) -> str:
    return f"legacy:coupon:{{{coupon_id}}}:quantity"


def _json(status: int, message: str, data: object) -> Response:
    return Response(
        orjson.dumps({"code": status, "message": message, "data": data}),
        status_code=status,
        media_type="application/json",
    )


async def open_coupon(redis: Redis, coupon_id: int, quantity: int) -> None:
    await redis.set(quantity_key(coupon_id), quantity)


async def move_batch(pool: asyncpg.Pool, redis: Redis, coupon_id: int, moved: int) -> int:
    """Insert the users queued after the first ``moved``, in arrival order; returns how many it moved."""
    entries = await redis.zrange(queue_key(coupon_id), moved, -1, withscores=True)
    if not entries:
        return 0
    users = [int(member) for member, _score in entries]
    requested = [datetime.fromtimestamp(score / 1000, UTC) for _member, score in entries]
    request_ids = [f"legacy-{uuid.uuid4().hex}" for _ in entries]
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO coupon_requests (request_id, user_id, coupon_id, status, requested_at, decided_at)"
            " SELECT r, u, $3, 'ISSUED', t, $5 FROM unnest($1::text[], $2::bigint[], $4::timestamptz[]) AS x(r, u, t)",
            request_ids,
            users,
            coupon_id,
            requested,
            now,
        )
        await conn.execute(
            "INSERT INTO user_coupons (user_id, coupon_id, request_id, issued_at)"
            " SELECT u, $3, r, $4 FROM unnest($1::text[], $2::bigint[]) AS x(r, u)",
            request_ids,
            users,
            coupon_id,
            now,
        )
        await conn.execute("UPDATE coupons SET issued_count = issued_count + $2 WHERE id = $1", coupon_id, len(users))
    return len(users)


def command() -> list[str]:
    """The process that serves this design (for ``harness.System.commands``)."""
    return [sys.executable, "-m", "couponrush_bench.legacy"]


async def insert_coupon(conn: asyncpg.Connection, quantity: int) -> int:
    """A coupon straight into the table: this design has no admin API."""
    coupon_id: int = await conn.fetchval(
        "INSERT INTO coupons (name, discount_rate, quantity, status, expired_at)"
        " VALUES ('legacy', 0.1, $1, 'PUBLISHABLE', '2099-01-01') RETURNING id",
        quantity,
    )
    return coupon_id


def create_app(database_url: str, redis_url: str, interval_s: float) -> Starlette:
    state: dict[str, object] = {}

    async def publish(request: Request) -> Response:
        redis: Redis = state["redis"]  # type: ignore[assignment]
        try:
            user_id = int(request.path_params["user_id"])
            coupon_id = int(orjson.loads(await request.body())["couponId"])
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return _json(400, "invalid request", {"reason": "INVALID_REQUEST"})
        answer = await redis.eval(  # type: ignore[misc]
            _ENQUEUE, 2, queue_key(coupon_id), quantity_key(coupon_id), str(user_id), str(int(time.time() * 1000))
        )
        verdict = answer.decode()
        if verdict != "OK":
            return _json(409, "not issued", {"reason": verdict})
        return _json(200, "OK", {"userId": user_id, "couponId": coupon_id})

    async def open_(request: Request) -> Response:
        body = orjson.loads(await request.body())
        await open_coupon(state["redis"], int(body["couponId"]), int(body["quantity"]))  # type: ignore[arg-type]
        return _json(200, "OK", None)

    async def batch_forever() -> None:
        pool: asyncpg.Pool = state["pool"]  # type: ignore[assignment]
        redis: Redis = state["redis"]  # type: ignore[assignment]
        moved: dict[int, int] = {}
        while True:
            await asyncio.sleep(interval_s)
            for key in await redis.keys("legacy:coupon:*:queue"):
                coupon_id = int(key.decode().split("{")[1].split("}")[0])
                try:
                    moved[coupon_id] = moved.get(coupon_id, 0) + await move_batch(
                        pool, redis, coupon_id, moved.get(coupon_id, 0)
                    )
                except Exception:
                    log.exception("legacy batch failed for coupon %s", coupon_id)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await create_pool(database_url)
        state["redis"] = Redis.from_url(redis_url)
        batcher = asyncio.create_task(batch_forever())
        yield
        batcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batcher
        await state["redis"].aclose()  # type: ignore[attr-defined]
        await state["pool"].close()  # type: ignore[attr-defined]

    return Starlette(
        routes=[
            Route("/api/v1/users/{user_id}/coupons/publish", publish, methods=["POST"]),
            Route("/legacy/open", open_, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app = create_app(
        os.environ["COUPONRUSH_DATABASE_URL"],
        os.environ["COUPONRUSH_REDIS_URL"],
        float(os.environ.get("COUPONRUSH_BENCH_LEGACY_INTERVAL_S", "60")),
    )
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["COUPONRUSH_HTTP_PORT"]), log_level="warning")


if __name__ == "__main__":
    main()
