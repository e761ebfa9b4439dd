"""The relay marks a row sent only once the broker acknowledged it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from couponrush.service.ports import OutboundMessage
from couponrush.service.relay import relay_once, run_relay
from tests.support.fakes import FakeOutbox, FakeSink


def message(key: str) -> OutboundMessage:
    return OutboundMessage(topic="t", key=key, payload=key.encode(), headers={"request-id": key})


async def test_acknowledged_rows_are_marked_sent_and_the_rest_kept_with_their_error() -> None:
    outbox, sink = FakeOutbox(), FakeSink(refuse={"b"})
    for key in "abc":
        outbox.add(message(key))
    result = await relay_once(outbox, sink, batch_size=10)
    assert (result.sent, result.failed) == (2, 1)
    assert outbox.sent == [1, 3]
    assert outbox.errors == {2: "broker unavailable"}
    assert [m.key for m in await_unsent(outbox)] == ["b"]


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - a fake has no event to wait on; each turn lets the relay run
        await asyncio.sleep(0.001)


def await_unsent(outbox: FakeOutbox) -> list[OutboundMessage]:
    return [row.message for i, row in sorted(outbox.rows.items()) if i not in outbox.sent]


async def test_a_row_refused_by_the_broker_is_retried_until_it_is_sent() -> None:
    outbox, sink = FakeOutbox(), FakeSink(refuse={"a"})
    outbox.add(message("a"))
    stop = asyncio.Event()

    async def broker_comes_back() -> None:
        await until(lambda: bool(outbox.errors))
        sink.refuse.clear()
        await until(lambda: bool(outbox.sent))
        stop.set()

    await asyncio.wait_for(
        asyncio.gather(run_relay(outbox, sink, stop, batch_size=10, idle_scan_s=0.01), broker_comes_back()), 5
    )
    assert outbox.sent == [1]
    assert [m.key for m in sink.delivered] == ["a"]


async def test_rows_are_sent_in_outbox_order_and_in_batches() -> None:
    outbox, sink = FakeOutbox(), FakeSink()
    for key in "abcde":
        outbox.add(message(key))
    first = await relay_once(outbox, sink, batch_size=3)
    second = await relay_once(outbox, sink, batch_size=3)
    assert (first.sent, second.sent) == (3, 2)
    assert [m.key for m in sink.delivered] == list("abcde")
