"""The HTTP API: translate HTTP to service calls and service outcomes to enveloped answers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from couponrush.bootstrap import Services, listen_for_decisions, open_services
from couponrush.config import Settings
from couponrush.domain.model import InvalidField
from couponrush.entrypoints.api import envelope, publish
from couponrush.entrypoints.api.body_limit import BodyLimitMiddleware
from couponrush.entrypoints.api.deps import AdminRequired, BadInput, NoRequest, UserRequired
from couponrush.entrypoints.api.docs import install_docs
from couponrush.entrypoints.api.fast_publish import FastPublishMiddleware
from couponrush.entrypoints.api.middleware import ObservabilityMiddleware
from couponrush.entrypoints.api.publish import Inflight
from couponrush.entrypoints.api.routes import coupon_records, coupons, health, live, metrics, users
from couponrush.observability import metrics as counters
from couponrush.service.admission import Refused, Unavailable
from couponrush.service.clock import utcnow
from couponrush.service.coupon_admin import ChangeRefused
from couponrush.service.outcomes import Waiters

log = logging.getLogger(__name__)

DESCRIPTION = """First-come-first-served coupon drops.

Every answer, success or error, is `{"code": <http status>, "message": "...", "data": ...}`. Errors carry
`data.reason`, a stable word: 400 `INVALID_REQUEST` (the field is named in `message` and `data.details`),
401 `UNAUTHORIZED` (admin routes: `Authorization: Bearer $COUPONRUSH_ADMIN_TOKEN`), 404 `UNKNOWN_COUPON` or
`NO_REQUEST`, 409 `SOLD_OUT`, `ALREADY_REQUESTED`, `NOT_OPEN` (with `data.opensAt` and `Retry-After` for a
scheduled coupon), `EXPIRED`, `QUANTITY_BELOW_FLOOR` (with `data.floor`), 413 `PAYLOAD_TOO_LARGE`, 503
`UNAVAILABLE` with `Retry-After` (nothing was accepted: try again).
"""


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    if any(e.get("type") == "json_invalid" for e in errors):
        return "malformed JSON body"
    parts = [f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def _bad_input(where: tuple[str, ...], message: str) -> Response:
    location = ".".join(where)
    details = [{"loc": list(where), "msg": message, "type": "value_error"}]
    return envelope.error(400, f"invalid request: {location}: {message}", "INVALID_REQUEST", details)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.endswith("/coupons/publish"):
            counters.PUBLISH_REQUESTS.labels("invalid", "INVALID_REQUEST").inc()
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        return envelope.error(400, _validation_message(list(exc.errors())), "INVALID_REQUEST", errors)

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> Response:
        return publish.refused(exc).response()

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> Response:
        return publish.unavailable(exc).response()

    @app.exception_handler(InvalidField)
    async def _invalid_field(_: Request, exc: InvalidField) -> Response:
        return _bad_input(("body", exc.field), exc.message)

    @app.exception_handler(BadInput)
    async def _bad(_: Request, exc: BadInput) -> Response:
        return _bad_input(exc.where, exc.message)

    @app.exception_handler(ChangeRefused)
    async def _change_refused(_: Request, exc: ChangeRefused) -> Response:
        return envelope.error(409, str(exc), exc.reason, **exc.data)

    @app.exception_handler(NoRequest)
    async def _no_request(_: Request, exc: NoRequest) -> Response:
        return envelope.error(404, str(exc), "NO_REQUEST")

    @app.exception_handler(AdminRequired)
    async def _unauthorized(_: Request, exc: AdminRequired) -> Response:
        return envelope.error(401, exc.message, "UNAUTHORIZED", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(UserRequired)
    async def _user_required(_: Request, exc: UserRequired) -> Response:
        reason = "UNAUTHORIZED" if exc.status == 401 else "FORBIDDEN"
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return envelope.error(exc.status, exc.message, reason, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        reason = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}.get(
            exc.status_code, "HTTP_ERROR"
        )
        return envelope.error(exc.status_code, str(exc.detail), reason, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope.error(500, "internal error", "INTERNAL_ERROR")


def _without_native_telemetry() -> dict[str, Any]:
    """Turn off FastAPI's own OpenTelemetry (newer releases): our middleware makes the spans, and its
    per-request provider checks cost ~5% of the API's CPU even when nothing is exported."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    off = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    return {"telemetry": off}


async def _restore_missing_gates(services: Services) -> None:
    try:
        ids = await services.snapshots.open_coupon_ids(utcnow())
        for coupon_id in await services.gate.missing(ids):
            services.rebuilder.schedule(coupon_id)
    except Exception as exc:
        log.warning("could not check the gates at start-up (%r); requests will restore them one by one", exc)


@contextlib.contextmanager
def _answer_waiters_on_signals(waiters: Waiters) -> Iterator[None]:
    """On SIGTERM/SIGINT, requests waiting for an outcome answer what they have at once (and streams end),
    so the server's drain is not held up to its bound by clients that wait up to 30 s.

    uvicorn handles the signals with plain ``signal.signal`` handlers (set before the app starts); this
    chains onto them in this process, and puts them back when the app stops."""
    loop = asyncio.get_running_loop()
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if not callable(handler):
            continue

        def chained(signum: int, frame: FrameType | None, handler: Callable[..., Any] = handler) -> None:
            loop.call_soon_threadsafe(waiters.close)
            handler(signum, frame)

        try:
            signal.signal(sig, chained)
        except ValueError:  # not the main thread (in-process test servers): nothing to chain onto
            continue
        previous[sig] = handler
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


OpenServices = Callable[[Settings], contextlib.AbstractAsyncContextManager[Services]]


def _open_api_services(settings: Settings) -> contextlib.AbstractAsyncContextManager[Services]:
    return open_services(settings, role="api")


def create_app(
    settings: Settings, services: OpenServices = _open_api_services, *, restore_gates: bool = True
) -> FastAPI:
    """The API over ``services`` (another design's, for the benchmark's comparison, or the product's own)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        waiters = Waiters()
        async with services(settings) as opened, listen_for_decisions(settings, waiters):
            app.state.services = opened
            app.state.admission = opened.admission()
            app.state.inflight = Inflight(settings.http_max_inflight)
            app.state.probes = opened.probes()
            app.state.outcomes = opened.outcomes(waiters)
            app.state.live = opened.live_view(latency_route=publish.ROUTE)
            # Redis keeps nothing on disk: restore the gate of every open coupon it has lost.
            restoring = asyncio.create_task(_restore_missing_gates(opened)) if restore_gates else None
            with _answer_waiters_on_signals(waiters):
                yield
            if restoring is not None:
                restoring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await restoring

    app = FastAPI(
        title="couponrush",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served with packaged assets (docs.py), not from a CDN
        redoc_url=None,
        **_without_native_telemetry(),
    )
    _install_error_handlers(app)
    install_docs(app)
    if settings.http_fast_publish:
        # Added first, so it runs inside the observability middleware (request id, HTTP metrics).
        app.add_middleware(FastPublishMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.http_max_body_bytes)
    app.add_middleware(ObservabilityMiddleware)
    app.include_router(coupons.router)
    app.include_router(coupon_records.router)
    app.include_router(users.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(live.router)
    return app
