"""Per HTTP request: a server-made request id (context variable + ``X-Request-ID`` answer header),
HTTP metrics by route template, and a server span when tracing is on. Pure ASGI, so the route runs
in the same context and sees the request id."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from couponrush.observability import metrics, tracing
from couponrush.observability.context import REQUEST_ID, new_request_id

REQUEST_ID_HEADER = b"x-request-id"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            if tracing.enabled():
                headers: dict[str, bytes] = {k.decode("latin-1"): v for k, v in scope.get("headers", [])}
                with tracing.span(
                    scope["method"],  # renamed to "METHOD /route/{template}" once routed (bounded names)
                    parent_headers=headers,
                    kind="SERVER",
                    attributes={"http.request.method": scope["method"], "couponrush.request_id": request_id},
                ) as span:
                    try:
                        await self.app(scope, receive, send_with_id)
                    finally:
                        tracing.rename(span, f"{scope['method']} {_route_template(scope)}")
                        tracing.set_attribute(span, "http.response.status_code", status)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            route = _route_template(scope)
            metrics.HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            metrics.HTTP_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - started)
            REQUEST_ID.reset(token)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label values), never the raw path."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
