"""Rebuilding a lost gate from the database: fenced, then exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from couponrush.domain.model import CouponStatus, NewCoupon, RequestStatus
from couponrush.service.gate_rebuild import GateRebuilder
from tests.support.fakes import FakeCoupons, FakeGate, FakeSnapshots

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def make(quantity: int) -> tuple[GateRebuilder, FakeGate, FakeSnapshots]:
    coupons = FakeCoupons()
    await coupons.create(NewCoupon("c", Decimal("0.1"), quantity, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1)))
    gate, snapshots = FakeGate(), FakeSnapshots(coupons)
    return GateRebuilder(gate=gate, snapshots=snapshots, grace_s=0.01, clock=lambda: NOW), gate, snapshots


async def test_a_rebuilt_gate_holds_every_issued_and_pending_user_and_the_rest_as_stock() -> None:
    rebuilder, gate, snapshots = await make(quantity=10)
    snapshots.requests = {
        "a": (1, 1, RequestStatus.ISSUED),
        "b": (1, 2, RequestStatus.PENDING),
        "c": (1, 3, RequestStatus.REJECTED),
    }
    assert await rebuilder.rebuild(1)
    assert gate.holders[1] == {1: "a", 2: "b"}
    assert gate.stock[1] == 8
    assert 1 not in gate.rebuilding


async def test_a_coupon_being_rebuilt_by_someone_else_is_left_to_them() -> None:
    rebuilder, gate, _ = await make(quantity=10)
    gate.rebuilding[1] = "another process"
    assert not await rebuilder.rebuild(1)
    assert gate.rebuilding[1] == "another process"


async def test_a_request_refused_while_rebuilding_has_its_unit_released_after() -> None:
    rebuilder, gate, snapshots = await make(quantity=2)
    snapshots.requests = {"p": (1, 9, RequestStatus.PENDING)}
    original = snapshots.snapshot

    async def snapshot_then_refuse(coupon_id: int):  # type: ignore[no-untyped-def]
        taken = await original(coupon_id)
        snapshots.requests["p"] = (1, 9, RequestStatus.REJECTED)  # the worker refused it meanwhile
        await gate.release(1, 9, "p")  # ...and its release hit the fenced gate: a no-op
        return taken

    snapshots.snapshot = snapshot_then_refuse  # type: ignore[method-assign]
    assert await rebuilder.rebuild(1)
    assert gate.holders[1] == {}
    assert gate.stock[1] == 2


async def test_rebuild_all_covers_every_open_coupon() -> None:
    rebuilder, gate, _ = await make(quantity=3)
    assert await rebuilder.rebuild_all() == {1: True}
    assert gate.stock[1] == 3


async def test_a_rebuild_that_fails_lifts_its_fence_so_the_next_request_retries() -> None:
    rebuilder, gate, snapshots = await make(quantity=3)

    async def database_away(coupon_id: int) -> None:
        raise ConnectionError("database is away")

    snapshots.snapshot = database_away  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await rebuilder.rebuild(1)
    assert 1 not in gate.rebuilding
