"""The worker's commit policy: settle every record (issue, refuse or park), then commit; never skip."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import CouponStatus, NewCoupon
from couponrush.service.issuing import IssuingService
from couponrush.service.ports import InboundRecord, UnprocessableEvent
from couponrush.service.worker import Worker
from tests.support.fakes import FakeCoupons, FakeDeadLetters, FakeGate, FakeIssuer, FakeSource

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def record(offset: int, value: bytes | None) -> InboundRecord:
    return InboundRecord(topic="requests", partition=0, offset=offset, key=b"1", value=value, headers={})


def request(request_id: str, user_id: int) -> bytes:
    return PublishRequested(request_id=request_id, user_id=user_id, coupon_id=1, requested_at=NOW).to_json()


async def run_until_drained(source: FakeSource, issuer: FakeIssuer, dead: FakeDeadLetters) -> None:
    service = IssuingService(issuer=issuer, gate=FakeGate(), clock=lambda: NOW)
    stop = asyncio.Event()
    worker = Worker(source=source, issuing=service, dead_letters=dead)

    async def stop_when_drained() -> None:
        await source.drained.wait()
        stop.set()

    await asyncio.wait_for(asyncio.gather(worker.run(stop), stop_when_drained()), 5)


async def coupons_with_stock(quantity: int) -> FakeCoupons:
    coupons = FakeCoupons()
    await coupons.create(NewCoupon("c", Decimal("0.1"), quantity, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1)))
    return coupons


async def test_a_malformed_record_is_parked_with_its_reason_and_the_rest_still_issued() -> None:
    coupons = await coupons_with_stock(5)
    source = FakeSource([[record(0, b"{garbage"), record(1, request("r1", 7)), record(2, None)]])
    dead = FakeDeadLetters()
    await run_until_drained(source, FakeIssuer(coupons), dead)
    assert [(r.offset, reason) for r, reason, _ in dead.parked] == [(0, "MALFORMED"), (2, "MALFORMED")]
    assert "JSON" in dead.parked[0][2]
    assert [h.user_id for h in coupons.held] == [7]
    assert [r.offset for r in source.committed[0]] == [0, 1, 2]


async def test_a_failing_database_is_retried_not_skipped() -> None:
    coupons = await coupons_with_stock(5)
    issuer = FakeIssuer(coupons, failures_left=2)
    source = FakeSource([[record(0, request("r1", 7)), record(1, request("r2", 8))]])
    await run_until_drained(source, issuer, FakeDeadLetters())
    assert [h.user_id for h in coupons.held] == [7, 8]
    assert [r.offset for r in source.committed[0]] == [0, 1]


async def test_a_batch_the_database_could_not_take_before_stopping_commits_none_of_it() -> None:
    coupons = await coupons_with_stock(5)
    issuer = FakeIssuer(coupons)
    source = FakeSource([[record(0, b"{garbage"), record(1, request("r1", 7)), record(2, request("r2", 8))]])
    service = IssuingService(issuer=issuer, gate=FakeGate(), clock=lambda: NOW)
    stop = asyncio.Event()

    async def database_away(events: object, now: datetime) -> object:
        stop.set()
        raise ConnectionError("database is away")

    issuer.issue_batch = database_away  # type: ignore[method-assign,assignment]
    await asyncio.wait_for(Worker(source=source, issuing=service, dead_letters=FakeDeadLetters()).run(stop), 5)
    # The parked record before the batch is settled; the batch is handed back whole.
    assert [r.offset for r in source.committed[0]] == [0]


async def test_a_poll_is_issued_in_one_batch_in_partition_order() -> None:
    coupons = await coupons_with_stock(2)
    issuer = FakeIssuer(coupons)
    source = FakeSource([[record(i, request(f"r{i}", 10 + i)) for i in range(4)]])
    await run_until_drained(source, issuer, FakeDeadLetters())
    assert issuer.batches == [4]
    assert [h.user_id for h in coupons.held] == [10, 11]  # first come, first served
    assert [r.offset for r in source.committed[0]] == [0, 1, 2, 3]


async def test_an_event_the_database_can_never_store_is_parked_not_retried_forever() -> None:
    coupons = await coupons_with_stock(5)
    issuer = FakeIssuer(coupons)

    def refuse_r1(event: PublishRequested) -> None:
        if event.request_id == "r1":
            raise UnprocessableEvent("DataError: invalid byte sequence")

    issuer.refuse = refuse_r1
    source = FakeSource([[record(0, request("r1", 7)), record(1, request("r2", 8))]])
    dead = FakeDeadLetters()
    await run_until_drained(source, issuer, dead)
    assert [(r.offset, reason) for r, reason, _ in dead.parked] == [(0, "UNPROCESSABLE")]
    assert [h.user_id for h in coupons.held] == [8]  # the partition moved on
    assert [r.offset for r in source.committed[0]] == [0, 1]
