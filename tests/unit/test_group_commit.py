"""Group commit: concurrent callers share a transaction, and each learns exactly what happened to its item."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from couponrush.service.group_commit import GroupCommitter
from couponrush.service.ports import NotRecorded


class Store:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_with: Exception | None = None
        self.flushing = asyncio.Event()
        self.taken: set[int] = set()  # items whose place is already taken: refused one by one

    async def flush(self, items: Sequence[int]) -> set[int]:
        self.flushing.set()
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(list(items))
        return {i for i, item in enumerate(items) if item in self.taken}


async def test_a_lone_item_is_flushed_at_once_without_waiting_for_company() -> None:
    store = Store()
    committer = GroupCommitter(store.flush, concurrency=1)
    await asyncio.wait_for(committer.submit(1, timeout=5), 1)
    assert store.batches == [[1]]
    await committer.close()


async def test_items_queued_behind_a_busy_flush_share_the_next_transaction_in_order() -> None:
    store = Store()
    committer = GroupCommitter(store.flush, concurrency=1)
    store.gate.clear()  # the first flush is slow
    first = asyncio.create_task(committer.submit(0, timeout=5))
    await store.flushing.wait()
    rest = [asyncio.create_task(committer.submit(n, timeout=5)) for n in range(1, 6)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert store.batches == [[0], [1, 2, 3, 4, 5]]
    await committer.close()


async def test_batches_never_exceed_their_maximum() -> None:
    store = Store()
    committer = GroupCommitter(store.flush, concurrency=1, max_batch=3)
    store.gate.clear()
    tasks = [asyncio.create_task(committer.submit(n, timeout=5)) for n in range(8)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*tasks)
    assert [len(b) for b in store.batches] == [3, 3, 2]
    assert [n for b in store.batches for n in b] == list(range(8))
    await committer.close()


async def test_a_failed_flush_fails_every_item_in_it_with_its_error() -> None:
    store = Store()
    store.fail_with = NotRecorded("outbox insert failed")
    committer = GroupCommitter(store.flush, concurrency=1)
    results = await asyncio.gather(*(committer.submit(n, timeout=5) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, NotRecorded) for r in results)
    store.fail_with = None
    await committer.submit(9, timeout=5)  # the committer carries on
    assert store.batches == [[9]]
    await committer.close()


async def test_an_item_still_queued_at_its_deadline_is_certainly_not_recorded() -> None:
    store = Store()
    committer = GroupCommitter(store.flush, concurrency=1)
    store.gate.clear()
    stuck = asyncio.create_task(committer.submit(1, timeout=5))  # occupies the only flusher
    await store.flushing.wait()
    with pytest.raises(NotRecorded):
        await committer.submit(2, timeout=0.05)
    store.gate.set()
    await stuck
    await asyncio.sleep(0.01)
    assert store.batches == [[1]]  # item 2 was withdrawn, never written
    await committer.close()


async def test_an_item_in_flight_at_its_deadline_learns_the_flush_outcome() -> None:
    store = Store()
    committer = GroupCommitter(store.flush, concurrency=1)
    store.gate.clear()
    waiting = asyncio.create_task(committer.submit(1, timeout=0.05))
    await asyncio.sleep(0.1)  # past its deadline, but its flush already started
    assert not waiting.done()
    store.gate.set()
    await waiting  # committed: no error
    assert store.batches == [[1]]
    await committer.close()


async def test_close_flushes_what_is_queued_and_refuses_new_items() -> None:
    store = Store()
    committer = GroupCommitter(store.flush, concurrency=1)
    store.gate.clear()
    tasks = [asyncio.create_task(committer.submit(n, timeout=5)) for n in range(3)]
    await asyncio.sleep(0)
    closing = asyncio.create_task(committer.close())
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*tasks, closing)
    assert [n for b in store.batches for n in b] == [0, 1, 2]
    with pytest.raises(NotRecorded):
        await committer.submit(3, timeout=5)


async def test_an_item_the_flush_refuses_is_not_recorded_while_its_batch_mates_are() -> None:
    store = Store()
    store.taken = {2}
    committer = GroupCommitter(store.flush, concurrency=1)
    store.gate.clear()
    tasks = [asyncio.create_task(committer.submit(n, timeout=5)) for n in range(1, 4)]
    await asyncio.sleep(0)
    store.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], NotRecorded)
    await committer.close()
