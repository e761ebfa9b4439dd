"""A lean HTTP/1.1 load generator: keep-alive connections on raw asyncio protocols.

It shares the machine with the system under test, so it must cost little: requests are
pre-encoded bytes, responses are parsed only as far as the status line and Content-Length, and
only refusals keep their body (to read the reason). Its own ceiling is measured by the ``ceiling``
scenario (the same generator against a bare endpoint of the same server).

Two shapes of load:
- closed loop: ``concurrency`` connections, each sends its next request when the last answered;
- open loop: request ``i`` is due at ``start + i / rate`` whatever came back before (up to
  ``concurrency`` in flight); latency then counts from when it was due, so a server that falls
  behind shows it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson


@dataclass(frozen=True, slots=True)
class Call:
    """One request to send: pre-encoded, and who it is for (to check invariants afterwards)."""

    payload: bytes
    user_id: int = 0


@dataclass(slots=True)
class Result:
    user_id: int
    due: float  # when it was sent (closed loop) or due (open loop), perf_counter seconds
    done: float
    status: int
    reason: str | None  # data.reason of a refusal


def post_json(host: str, port: int, path: str, body: object) -> bytes:
    raw = orjson.dumps(body)
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw


def get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._try_complete()

    def _try_complete(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        status = int(head[9:12])
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def send(self, payload: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


def _reason(status: int, body: bytes) -> str | None:
    if status == 200 or not body:
        return None
    try:
        data = orjson.loads(body).get("data") or {}
        return str(data.get("reason")) if isinstance(data, dict) else None
    except orjson.JSONDecodeError:
        return "UNPARSEABLE"


@dataclass
class LoadRun:
    results: list[Result] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    errors: int = 0  # connection-level failures (no HTTP answer)
    cpu_s: float = 0.0  # the generator's own CPU time during the run (its cost on the shared cores)

    @property
    def duration(self) -> float:
        return max(self.finished - self.started, 1e-9)


async def run_load(
    host: str,
    port: int,
    calls: Sequence[Call],
    *,
    concurrency: int,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LoadRun:
    """Send every call once; closed loop at ``concurrency``, or open loop at ``rate`` per second."""
    loop = asyncio.get_running_loop()
    run = LoadRun(results=[])
    connections = min(concurrency, len(calls)) or 1
    protocols: list[_Connection] = []
    for _ in range(connections):
        _transport, protocol = await loop.create_connection(_Connection, host, port)
        protocols.append(protocol)
    next_index = 0
    cpu_started = time.process_time()
    run.started = time.perf_counter()

    async def drive(connection: _Connection) -> None:
        nonlocal next_index
        while next_index < len(calls):
            index = next_index
            next_index += 1
            call = calls[index]
            if rate is not None:
                due = run.started + index / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                due = time.perf_counter()
            try:
                status, body = await connection.send(call.payload)
            except ConnectionError:
                run.errors += 1
                connection = await _reconnect(host, port)
                continue
            run.results.append(Result(call.user_id, due, time.perf_counter(), status, _reason(status, body)))
            if on_progress is not None:
                on_progress(1)

    await asyncio.gather(*(drive(p) for p in protocols))
    run.finished = time.perf_counter()
    run.cpu_s = time.process_time() - cpu_started
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    return run


async def _reconnect(host: str, port: int) -> _Connection:
    _transport, protocol = await asyncio.get_running_loop().create_connection(_Connection, host, port)
    return protocol
