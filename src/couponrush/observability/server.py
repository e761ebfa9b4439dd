"""The relay's and worker's own small HTTP endpoint: ``/metrics``, ``/health/live``, ``/health/ready``.

Plain asyncio, in the role's own event loop, so readiness uses the role's own connections.
Only GET, one request per connection; it is for scrapers and probes, not for users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

import orjson
from prometheus_client.core import Metric

from couponrush.observability import metrics
from couponrush.observability.health import Probe, liveness, readiness

log = logging.getLogger(__name__)

ExtraFamilies = Callable[[], Awaitable[Sequence[Metric]]]


async def _no_extra() -> Sequence[Metric]:
    return ()


class ObservabilityServer:
    def __init__(self, probes: Sequence[Probe], extra: ExtraFamilies = _no_extra) -> None:
        self.probes = probes
        self.extra = extra
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> bool:
        """Listen on host:port; False (and a logged error) when the port is taken: the role runs on without."""
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            log.error("metrics/health endpoint not started on %s:%d: %s", host, port, exc)
            return False
        log.info("metrics and health on http://%s:%d (/metrics, /health/live, /health/ready)", host, self.port)
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if method != "GET":
            return 405, "application/json", orjson.dumps({"code": 405, "message": "only GET", "data": None})
        if path == "/metrics":
            return 200, metrics.CONTENT_TYPE, metrics.render(await self.extra())
        if path == "/health/live":
            status, body = liveness()
            return status, "application/json", orjson.dumps(body)
        if path == "/health/ready":
            status, body = await readiness(self.probes)
            return status, "application/json", orjson.dumps(body)
        return 404, "application/json", orjson.dumps({"code": 404, "message": "not found", "data": None})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request_line = (await reader.readline()).decode("latin-1").split()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: not needed
                if len(request_line) < 2:
                    return
                try:
                    status, content_type, body = await self._answer(request_line[0], request_line[1])
                except Exception:
                    log.exception("metrics/health endpoint failed")
                    status, content_type, body = 500, "text/plain", b"internal error"
                head = (
                    f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
