"""The product's ``Services``, built with the report's two choices on the request path: the flag gate, and
one transaction per accepted request (no group commit)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from couponrush.adapters.coupons import PostgresCoupons, PostgresGateSnapshots
from couponrush.adapters.db import create_pool
from couponrush.adapters.requests import GroupCommitRequestLog, PostgresRequestLog
from couponrush.bootstrap import Services
from couponrush.config import Settings
from couponrush.domain.events import PublishRequested
from couponrush.service.gate_rebuild import GateRebuilder
from couponrush_bench.report.gate import FlagGate, RedisFlags


class PerRequestLog(GroupCommitRequestLog):
    """The report's recording: each accepted request in a statement of its own, on a connection taken
    from the pool for it (``PostgresRequestLog.record_accepted``). A ``GroupCommitRequestLog`` by type
    only, so that the product's ``Services`` takes it; its committer is never started."""

    async def record_accepted(self, event: PublishRequested) -> None:
        await self.log.record_accepted(event)


@contextlib.asynccontextmanager
async def open_report_services(settings: Settings) -> AsyncIterator[Services]:
    """Like ``couponrush.bootstrap.open_services``, with the flag gate and per-request recording."""
    pool = await create_pool(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    gate = FlagGate(RedisFlags(redis), PostgresCoupons(pool))
    # The flag gate reserves nothing, so a rebuild has no in-flight reservation to wait out.
    rebuilder = GateRebuilder(gate=gate, snapshots=PostgresGateSnapshots(pool), grace_s=0.0)
    recorder = PerRequestLog(PostgresRequestLog(pool, timeout_s=settings.record_timeout_s))
    try:
        yield Services(settings=settings, pool=pool, redis=redis, gate=gate, rebuilder=rebuilder, recorder=recorder)
    finally:
        await recorder.close()
        await rebuilder.close()
        await redis.aclose()
        await pool.close()
