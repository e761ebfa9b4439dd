"""The live view's sampler against a fake reader: one reading per tick whoever watches, none without a viewer,
charts that keep their window and take late commits, and a p99 computed as Prometheus would."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.model import Coupon, CouponState, CouponStatus
from couponrush.service.live import LiveView, quantile
from couponrush.service.ports import CouponSummary

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SECOND = int(NOW.timestamp())


@dataclass
class FakeReader:
    reads: int = 0
    since: list[datetime] = field(default_factory=list)
    accepted: dict[int, int] = field(default_factory=dict)

    async def live_coupons(self, now: datetime, ended_within_s: float, limit: int) -> list[CouponSummary]:
        self.reads += 1
        coupon = Coupon(1, "drop", Decimal("0.1"), 10, 4, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1))
        return [CouponSummary(coupon, 3, CouponState.OPEN)]

    async def per_second(
        self, coupon_ids: Sequence[int], since: datetime
    ) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
        self.since.append(since)
        fresh = {s: n for s, n in self.accepted.items() if s >= since.timestamp()}
        return {1: fresh}, {1: {SECOND - 1: 4}}

    async def unsent(self, coupon_ids: Sequence[int]) -> dict[int, int]:
        return {1: 1}


def test_the_p99_of_a_window_is_interpolated_like_histogram_quantile() -> None:
    before = [(0.01, 10.0), (0.1, 10.0), (math.inf, 10.0)]
    now = [(0.01, 60.0), (0.1, 110.0), (math.inf, 110.0)]  # 50 under 10 ms, 50 between 10 and 100 ms
    assert quantile(now, before, 0.5) == 0.01
    p99 = quantile(now, before, 0.99)
    assert p99 is not None
    assert math.isclose(p99, 0.01 + 0.09 * 49 / 50)
    assert quantile(now, now, 0.99) is None  # nothing observed in the window
    assert quantile([(0.01, 0.0), (math.inf, 5.0)], [], 0.99) == 0.01  # beyond the last bound


async def test_a_first_tick_has_the_whole_window_and_later_ones_recount_the_last_seconds() -> None:
    reader = FakeReader(accepted={SECOND - 200: 7, SECOND - 3: 5})
    view = LiveView(reader=reader, http_buckets=lambda: [(0.01, 1.0), (math.inf, 1.0)], clock=lambda: NOW)
    first = await view.read(full=True)
    assert first["coupons"][0]["acceptedPerS"] == [[SECOND - 200, 7], [SECOND - 3, 5]]
    assert (first["coupons"][0]["lag"], first["lag"], first["coupons"][0]["available"]) == (2, 2, 3)
    reader.accepted[SECOND - 3] = 6  # a commit that landed late in an earlier second
    later = await view.read(full=False)
    assert later["coupons"][0]["acceptedPerS"] == [[SECOND - 3, 6]]
    assert reader.since[-1] == NOW - timedelta(seconds=10)
    assert later["coupons"][0]["issuedPerS"] == [[SECOND - 1, 4]]


async def test_viewers_share_one_sampler_which_stops_with_the_last_one() -> None:
    reader = FakeReader()
    view = LiveView(reader=reader, http_buckets=list, interval_s=0.01, clock=lambda: NOW)
    async with view.watch() as one, view.watch() as two:
        await asyncio.wait_for(one.get(), 2)
        tick = await asyncio.wait_for(two.get(), 2)
        assert tick["coupons"][0]["state"] == "OPEN"
    reads = reader.reads
    await asyncio.sleep(0.05)
    assert reader.reads == reads  # nobody watches: nothing is read
