"""The API under granian's native interface (RSGI): the publish route answered here, everything else by FastAPI.

In a drop nearly every request is ``POST /api/v1/users/{userId}/coupons/publish``. Answered natively, it
costs no ASGI message dicts and no middleware stack: the request is parsed here, decided and answered by
``publish.publish`` (the same function the documented FastAPI route calls), with the same status codes,
envelope, headers (``X-Request-ID``, ``Retry-After``) and metrics. Anything else (another route, a body
that is not plainly ``{"couponId": n}``, tracing on, user identity on) goes to the FastAPI app through a
small RSGI->ASGI bridge, so the OpenAPI document and every other answer are FastAPI's own.

Granian calls ``__rsgi_init__`` before its loop serves and ``__rsgi_del__`` after it drained: the app's
lifespan (services opened, then closed) runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.types import Message

from couponrush.config import Settings, load_settings
from couponrush.entrypoints.api.app import create_app
from couponrush.entrypoints.api.envelope import error_body
from couponrush.entrypoints.api.fast_publish import plain_coupon_id
from couponrush.entrypoints.api.publish import ROUTE, Answer, publish
from couponrush.entrypoints.api.schemas import MAX_ID
from couponrush.observability import metrics, tracing
from couponrush.observability.context import REQUEST_ID, new_request_id
from couponrush.observability.logging import configure_logging
from couponrush.observability.tracing import configure_tracing

_PATH = re.compile(r"/api/v1/users/([1-9][0-9]{0,18})/coupons/publish")
_HTTP_TIME = metrics.HTTP_SECONDS.labels("POST", ROUTE)
_HTTP_COUNTS: dict[int, Any] = {}
_JSON = "application/json"


class Headers(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def items(self) -> list[tuple[str, str]]: ...


class Scope(Protocol):
    proto: str
    http_version: str
    client: str
    server: str
    scheme: str
    method: str
    path: str
    query_string: str

    @property
    def headers(self) -> Headers: ...


class Stream(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...


class HTTPProtocol(Protocol):
    async def __call__(self) -> bytes: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def client_disconnect(self) -> None: ...

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Stream: ...


class RsgiApp:
    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_body = settings.http_max_body_bytes
        # Requests the native path leaves to FastAPI: user identity checks tokens there, tracing makes spans there.
        self.native = settings.http_fast_publish and settings.user_token_secret is None
        self._lifespan: contextlib.AbstractAsyncContextManager[Any] | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lifespan = self.app.router.lifespan_context(self.app)
        loop.run_until_complete(self._lifespan.__aenter__())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._lifespan is not None:
            loop.run_until_complete(self._lifespan.__aexit__(None, None, None))

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if scope.proto != "http":
            return
        if self.native and scope.method == "POST" and not tracing.enabled():
            match = _PATH.fullmatch(scope.path)
            if match is not None and _is_json(scope.headers.get("content-type")):
                await self._publish(scope, protocol, int(match[1]))
                return
        await self._asgi(scope, protocol)

    async def _publish(self, scope: Scope, protocol: HTTPProtocol, user_id: int) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        declared = scope.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            answer = _too_large(self.max_body)
        else:
            # A declared length within the limit: one read. Otherwise chunk by chunk, stopping past the limit.
            body = (
                await protocol()
                if declared is not None and declared.isdigit()
                else await _read(protocol, self.max_body)
            )
            coupon_id = plain_coupon_id(body) if body is not None and user_id <= MAX_ID else None
            if body is None:
                answer = _too_large(self.max_body)
            elif coupon_id is None:
                await self._asgi(scope, protocol, body)  # FastAPI gives the usual 4xx, as without this path
                return
            else:
                token = REQUEST_ID.set(request_id)
                try:
                    state = self.app.state
                    answer = await publish(state.admission, user_id, coupon_id, state.inflight)
                finally:
                    REQUEST_ID.reset(token)
        headers = [("content-type", _JSON), ("x-request-id", request_id)]
        headers.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers)
        protocol.response_bytes(answer.status, headers, answer.body)
        count = _HTTP_COUNTS.get(answer.status)
        if count is None:
            count = _HTTP_COUNTS[answer.status] = metrics.HTTP_REQUESTS.labels("POST", ROUTE, str(answer.status))
        metrics.TALLY.count(count)
        metrics.TALLY.observe(_HTTP_TIME, time.perf_counter() - started)

    async def _asgi(self, scope: Scope, protocol: HTTPProtocol, body: bytes | None = None) -> None:
        await _Bridge(scope, protocol, body, self.max_body).run(self.app)


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == _JSON


def _too_large(limit: int) -> Answer:
    return Answer(413, error_body(413, f"request body larger than {limit} bytes", "PAYLOAD_TOO_LARGE"))


async def _read(protocol: HTTPProtocol, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in protocol:
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class _Bridge:
    """One request served by the ASGI app over the RSGI protocol (the routes that are not the hot one)."""

    def __init__(self, scope: Scope, protocol: HTTPProtocol, body: bytes | None, limit: int) -> None:
        self.scope = scope
        self.protocol = protocol
        self.body = body
        self.limit = limit
        self.status = 500
        self.headers: list[tuple[str, str]] = []
        self.stream: Stream | None = None
        self.answered = False
        self._chunks: AsyncIterator[bytes] | None = None
        self._done_reading = False

    def asgi_scope(self) -> dict[str, Any]:
        s = self.scope
        host, _, port = s.client.rpartition(":")
        server_host, _, server_port = s.server.rpartition(":")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": s.http_version.removeprefix("HTTP/") or "1.1",
            "method": s.method,
            "scheme": s.scheme,
            "path": s.path,
            "raw_path": s.path.encode(),
            "query_string": s.query_string.encode(),
            "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in s.headers.items()],
            "client": (host, int(port)) if port.isdigit() else None,
            "server": (server_host, int(server_port)) if server_port.isdigit() else None,
            "state": {},
        }

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            self._done_reading = True
            return {"type": "http.request", "body": body, "more_body": False}
        if not self._done_reading:
            if self._chunks is None:
                self._chunks = self.protocol.__aiter__()
            try:
                chunk = await self._chunks.__anext__()
                return {"type": "http.request", "body": chunk, "more_body": True}
            except StopAsyncIteration:
                self._done_reading = True
                return {"type": "http.request", "body": b"", "more_body": False}
        await self.protocol.client_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            return
        if message["type"] != "http.response.body" or self.answered:
            return
        body = message.get("body", b"")
        if self.stream is None and not message.get("more_body", False):
            self.answered = True
            self.protocol.response_bytes(self.status, self._without_length(), body)
            return
        if self.stream is None:
            self.stream = self.protocol.response_stream(self.status, self._without_length())
        if body:
            await self.stream.send_bytes(body)
        if not message.get("more_body", False):
            self.answered = True

    def _without_length(self) -> list[tuple[str, str]]:
        # The server frames the body itself (content-length or chunked).
        return [(k, v) for k, v in self.headers if k.lower() != "content-length"]

    async def run(self, app: FastAPI) -> None:
        await app(self.asgi_scope(), self.receive, self.send)
        if not self.answered:
            self.protocol.response_bytes(self.status, self._without_length(), b"")


def create_rsgi_app(settings: Settings) -> RsgiApp:
    return RsgiApp(create_app(settings), settings)


def _die_with_parent() -> None:
    """A worker process dies with granian's main process: a killed API must not leave workers serving on
    (holding reservations, answering on the port). Linux only; elsewhere nothing happens."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def create_rsgi_app_from_env() -> RsgiApp:
    """Granian's factory (every worker process calls it): settings from the environment, logs, tracer."""
    _die_with_parent()
    settings = load_settings()
    configure_logging(settings.log_level, "api", settings.log_format)
    configure_tracing("api")
    return create_rsgi_app(settings)
