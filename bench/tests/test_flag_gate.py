"""The report's flag gate on the product's admission, against fakes: everyone through while the flag is
true (the over-acceptance the reserving gate removes), a lost flag restored from the database at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.support.fakes import FakeCoupons, FakeRequestLog

from couponrush.domain.model import CouponStatus, NewCoupon, RejectReason
from couponrush.service.admission import Admission
from couponrush_bench.report.gate import FlagGate, FlagState

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass
class FakeFlags:
    """The flags as Redis keeps them, in memory."""

    flags: dict[int, FlagState] = field(default_factory=dict)

    def forget(self, coupon_id: int) -> None:
        """What a Redis flush does to one coupon."""
        self.flags.pop(coupon_id, None)

    async def read(self, coupon_id: int) -> FlagState | None:
        return self.flags.get(coupon_id)

    async def set(
        self, coupon_id: int, reason: RejectReason | None, expires_at_ms: int, *, only_if_missing: bool = False
    ) -> None:
        if only_if_missing and coupon_id in self.flags:
            return
        self.flags[coupon_id] = FlagState(reason is None, reason, expires_at_ms)

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        expires = self.flags[coupon_id].expires_at_ms if coupon_id in self.flags else None
        self.flags[coupon_id] = FlagState(False, reason, expires)

    async def missing(self, coupon_ids: Sequence[int]) -> list[int]:
        return [c for c in coupon_ids if c not in self.flags]


async def make(*, quantity: int = 5) -> tuple[Admission, FakeFlags, FakeRequestLog, list[int]]:
    flags, coupons, log = FakeFlags(), FakeCoupons(), FakeRequestLog()
    coupon = await coupons.create(
        NewCoupon("c", Decimal("0.1"), quantity, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1))
    )
    gate = FlagGate(flags, coupons)
    await gate.open(coupon, NOW, created=True)
    rebuilds: list[int] = []
    admission = Admission(gate=gate, coupons=coupons, requests=log, schedule_rebuild=rebuilds.append, clock=lambda: NOW)
    return admission, flags, log, rebuilds


async def test_the_flag_gate_lets_everyone_through_while_the_flag_is_true() -> None:
    admission, _, log, _ = await make(quantity=1)
    await admission.request(7, 1)
    await admission.request(7, 1)
    await admission.request(8, 1)
    assert len(log.accepted) == 3  # the over-acceptance the reserving gate removes


async def test_the_flag_gate_restores_a_lost_flag_from_the_database_at_once() -> None:
    admission, flags, log, rebuilds = await make()
    flags.forget(1)
    await admission.request(7, 1)
    assert len(log.accepted) == 1
    assert rebuilds == []
