"""The report's worker, built from the product's: every record its own issuing transaction and its own
offset commit, in order, however many records one poll brought."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.support.fakes import FakeCoupons, FakeDeadLetters, FakeGate, FakeIssuer, FakeSource

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import CouponStatus, NewCoupon
from couponrush.service.issuing import IssuingService
from couponrush.service.ports import InboundRecord
from couponrush.service.worker import Worker
from couponrush_bench.report.worker import report_worker

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def record(offset: int, user_id: int) -> InboundRecord:
    event = PublishRequested(request_id=f"r{offset}", user_id=user_id, coupon_id=1, requested_at=NOW)
    return InboundRecord(topic="requests", partition=0, offset=offset, key=b"1", value=event.to_json(), headers={})


async def test_one_record_one_transaction_one_commit() -> None:
    coupons = FakeCoupons()
    await coupons.create(NewCoupon("c", Decimal("0.1"), 5, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1)))
    issuer = FakeIssuer(coupons)
    source = FakeSource([[record(0, 7), record(1, 8), record(2, 9)], [record(3, 10)]])
    batched = Worker(
        source=source,
        issuing=IssuingService(issuer=issuer, gate=FakeGate(), clock=lambda: NOW),
        dead_letters=FakeDeadLetters(),
    )
    worker = report_worker(batched, poll_size=500)
    stop = asyncio.Event()

    async def stop_when_drained() -> None:
        await source.drained.wait()
        stop.set()

    await asyncio.wait_for(asyncio.gather(worker.run(stop), stop_when_drained()), 5)
    assert issuer.batches == [1, 1, 1, 1]  # a transaction per record, not per poll
    assert [[r.offset for r in commit] for commit in source.committed] == [[0], [1], [2], [3]]
    assert [h.user_id for h in coupons.held] == [7, 8, 9, 10]
