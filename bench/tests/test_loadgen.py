"""The load generator against a tiny HTTP server on loopback: every call answered once, reasons read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from couponrush_bench.loadgen import Call, post_json, run_load


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """Answers 200 to even users and 409 SOLD_OUT to odd ones; records each request line."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            line = head.split(b"\r\n")[0]
            seen.append(line)
            user = int(line.split(b"/")[4])
            body = b'{"code":200,"data":{}}' if user % 2 == 0 else b'{"code":409,"data":{"reason":"SOLD_OUT"}}'
            status = b"200 OK" if user % 2 == 0 else b"409 Conflict"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    yield port, seen
    srv.close()
    await srv.wait_closed()


def calls(port: int, count: int) -> list[Call]:
    return [
        Call(post_json("127.0.0.1", port, f"/api/v1/users/{u}/coupons/publish", {"couponId": 1}), u)
        for u in range(count)
    ]


async def test_a_closed_loop_sends_every_call_once_and_reads_each_answer(server: tuple[int, list[bytes]]) -> None:
    port, seen = server
    run = await run_load("127.0.0.1", port, calls(port, 300), concurrency=8)
    assert len(seen) == 300
    assert sorted(r.user_id for r in run.results) == list(range(300))
    assert {(r.user_id % 2, r.status, r.reason) for r in run.results} == {(0, 200, None), (1, 409, "SOLD_OUT")}
    assert all(r.done >= r.due for r in run.results)


async def test_an_open_loop_schedules_each_call_at_its_due_time(server: tuple[int, list[bytes]]) -> None:
    port, _seen = server
    run = await run_load("127.0.0.1", port, calls(port, 50), concurrency=4, rate=1000.0)
    dues = sorted(r.due - run.started for r in run.results)
    # Call i is due i/rate after the start, whatever answered before it.
    assert dues == pytest.approx([i / 1000.0 for i in range(50)], abs=1e-6)
