"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from couponrush.adapters.db import pending_migrations
from couponrush.entrypoints.api.deps import ServicesDep
from couponrush.entrypoints.api.envelope import Envelope, ok

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", summary="The process is up")
async def live() -> Envelope[dict[str, str]]:
    return ok({"status": "UP"})


@router.get("/ready", summary="PostgreSQL and Redis answer and the schema is current", responses={503: {}})
async def ready(services: ServicesDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with services.pool.acquire() as conn:
            pending = await pending_migrations(conn)
        checks["postgres"] = "UP" if not pending else f"PENDING_MIGRATIONS({len(pending)})"
    except Exception as exc:
        checks["postgres"] = f"DOWN: {type(exc).__name__}"
    try:
        await services.redis.ping()  # type: ignore[misc]
        checks["redis"] = "UP"
    except Exception as exc:
        checks["redis"] = f"DOWN: {type(exc).__name__}"
    status = 200 if all(v == "UP" for v in checks.values()) else 503
    body = {"code": status, "message": "OK" if status == 200 else "NOT_READY", "data": checks}
    return JSONResponse(body, status_code=status)
