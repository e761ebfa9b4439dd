"""Bad input is cheap and clearly refused: oversized bodies are not read, ids are written one way only,
bodies carry only the documented field names."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from couponrush_bench.harness import System, create_coupon


def assert_envelope(response: httpx.Response, status: int, reason: str) -> None:
    body = response.json()
    assert response.status_code == status, body
    assert (body["code"], body["data"]["reason"]) == (status, reason)
    assert body["message"]


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


PUBLISH_HEAD = b"POST /api/v1/users/1/coupons/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


async def test_a_declared_oversized_body_gets_413_before_a_byte_of_it_is_sent(system: System) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", system.http_port)
    try:
        writer.write(PUBLISH_HEAD + b"content-length: 2000000\r\n\r\n")
        await writer.drain()
        started = time.monotonic()
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b'"reason":"PAYLOAD_TOO_LARGE"' in body
        assert time.monotonic() - started < 2  # answered without waiting for the 2 MB that never came
    finally:
        writer.close()


async def test_a_chunked_body_is_cut_off_with_413_once_past_the_limit(system: System) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", system.http_port)
    try:
        chunk = b"x" * 8192  # one chunk past the limit; the sender would go on for megabytes
        writer.write(PUBLISH_HEAD + b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        await writer.drain()
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b'"reason":"PAYLOAD_TOO_LARGE"' in body
    finally:
        writer.close()


@pytest.mark.parametrize("user", ["+1", "%201", "1_000", "01", "1.0", "-1", "0"])
async def test_only_canonical_positive_integers_are_ids(system: System, user: str) -> None:
    async with httpx.AsyncClient(base_url=system.base_url) as client:
        coupon_id = await create_coupon(client, 5)
        publish = await client.post(f"/api/v1/users/{user}/coupons/publish", json={"couponId": coupon_id})
        held = await client.get(f"/api/v1/users/{user}/coupons")
        status = await client.get(f"/api/v1/users/7/coupons/{user}/request")
    for response in (publish, held, status):
        assert_envelope(response, 400, "INVALID_REQUEST")


async def test_the_body_takes_only_the_documented_field_name(system: System) -> None:
    async with httpx.AsyncClient(base_url=system.base_url) as client:
        coupon_id = await create_coupon(client, 5)
        snake = await client.post("/api/v1/users/11/coupons/publish", json={"coupon_id": coupon_id})
        camel = await client.post("/api/v1/users/11/coupons/publish", json={"couponId": coupon_id})
    assert_envelope(snake, 400, "INVALID_REQUEST")
    assert camel.status_code == 200, camel.text
