"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from couponrush.entrypoints.api.envelope import Envelope, ok
from couponrush.observability.health import Probe, readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", summary="The process is up")
async def live() -> Envelope[dict[str, str]]:
    return ok({"status": "UP"})


@router.get(
    "/ready",
    summary="PostgreSQL (schema current), Redis and Kafka answer",
    responses={503: {"description": "some dependency does not answer; data says which"}},
)
async def ready(request: Request) -> JSONResponse:
    probes: list[Probe] = request.app.state.probes
    status, body = await readiness(probes)
    return JSONResponse(body, status_code=status)
