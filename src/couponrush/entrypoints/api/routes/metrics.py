"""Prometheus metrics of every API worker process, plus gauges read from PostgreSQL at scrape time."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client.core import Metric

from couponrush.entrypoints.api.deps import ServicesDep
from couponrush.observability import metrics

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)

# Per-coupon series are bounded: the most recent open coupons only.
MAX_COUPON_SERIES = 200


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
async def scrape(services: ServicesDep) -> Response:
    families: list[Metric] = []
    metrics.TALLY.flush()  # what this process counted since its last write
    try:
        operations = services.operations()
        families = metrics.database_families(
            await operations.outbox_state(),
            await operations.open_coupon_progress(MAX_COUPON_SERIES),
            await operations.oldest_undecided(),
        )
    except Exception:
        # The process's own metrics still matter most when the database is away.
        log.warning("could not read database gauges for /metrics", exc_info=True)
    return Response(metrics.render(families), media_type=metrics.CONTENT_TYPE)
