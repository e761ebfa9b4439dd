"""The admission gates against real Redis: the reserving Lua scripts and the report's flag."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis.asyncio import Redis

from couponrush.adapters.gate import RedisReservingGate, gate_key, holders_key
from couponrush.domain.model import Coupon, CouponStatus, GateSnapshot, RejectReason
from couponrush.service.ports import GateState, TermsOutcome
from couponrush_bench.polling import eventually

NOW = datetime.now(UTC)


def coupon(
    *,
    quantity: int = 3,
    issued: int = 0,
    expires_in: timedelta = timedelta(hours=1),
    status: CouponStatus = CouponStatus.PUBLISHABLE,
) -> Coupon:
    return Coupon(1, "c", Decimal("0.1"), quantity, issued, status, NOW + expires_in)


async def holders(redis: Redis, coupon_id: int = 1) -> dict[bytes, bytes]:
    result: dict[bytes, bytes] = await redis.hgetall(holders_key(coupon_id))  # type: ignore[misc]
    return result


async def whole_gate(redis: Redis, coupon_id: int = 1) -> dict[bytes, bytes]:
    result: dict[bytes, bytes] = await redis.hgetall(gate_key(coupon_id))  # type: ignore[misc]
    return result


async def gate_field(redis: Redis, name: str, coupon_id: int = 1) -> bytes | None:
    result: bytes | None = await redis.hget(gate_key(coupon_id), name)  # type: ignore[misc]
    return result


async def opened(redis: Redis, **kwargs: object) -> RedisReservingGate:
    gate = RedisReservingGate(redis)
    assert await gate.open(coupon(**kwargs), NOW, created=True)  # type: ignore[arg-type]
    return gate


async def test_keys_are_hash_tagged_by_coupon_so_a_script_touches_one_cluster_slot() -> None:
    assert gate_key(42) == "coupon:{42}:gate"
    assert holders_key(42) == "coupon:{42}:holders"


async def test_admitting_reserves_one_unit_for_that_user_and_request(redis: Redis) -> None:
    gate = await opened(redis, quantity=3)
    assert (await gate.admit(1, 7, "r7", NOW)).state is GateState.ADMITTED
    assert await holders(redis) == {b"7": b"r7"}
    assert await gate_field(redis, "stock") == b"2"
    assert await redis.get("coupon:available:1") == b"true"


async def test_the_last_unit_turns_the_reports_flag_false_at_once(redis: Redis) -> None:
    gate = await opened(redis, quantity=2)
    await gate.admit(1, 1, "a", NOW)
    await gate.admit(1, 2, "b", NOW)
    assert await redis.get("coupon:available:1") == b"false"
    assert await redis.get("coupon:closed-reason:1") == b"SOLD_OUT"
    verdict = await gate.admit(1, 3, "c", NOW)
    assert (verdict.state, verdict.reason) == (GateState.CLOSED, RejectReason.SOLD_OUT)


async def test_a_refusal_writes_nothing(redis: Redis) -> None:
    gate = await opened(redis, quantity=1)
    await gate.admit(1, 1, "a", NOW)
    before = (await whole_gate(redis), await holders(redis))
    assert (await gate.admit(1, 1, "again", NOW)).state is GateState.DUPLICATE
    assert (await gate.admit(1, 2, "b", NOW)).reason is RejectReason.SOLD_OUT
    assert (await whole_gate(redis), await holders(redis)) == before


async def test_release_frees_only_the_unit_of_that_exact_request(redis: Redis) -> None:
    gate = await opened(redis, quantity=1)
    await gate.admit(1, 7, "first", NOW)
    await gate.release(1, 7, "first")
    await gate.admit(1, 7, "second", NOW)
    await gate.release(1, 7, "first")  # late or repeated: must not free "second"
    assert await holders(redis) == {b"7": b"second"}
    assert await gate_field(redis, "stock") == b"0"


async def test_a_released_unit_reopens_a_sold_out_coupon_and_its_flag(redis: Redis) -> None:
    gate = await opened(redis, quantity=1)
    await gate.admit(1, 7, "r", NOW)
    assert await redis.get("coupon:available:1") == b"false"
    await gate.release(1, 7, "r")
    assert await redis.get("coupon:available:1") == b"true"
    assert (await gate.admit(1, 8, "s", NOW)).state is GateState.ADMITTED


async def test_expiry_refuses_at_the_instant_and_closes_the_flag(redis: Redis) -> None:
    gate = await opened(redis, expires_in=timedelta(seconds=10))
    verdict = await gate.admit(1, 7, "r", NOW + timedelta(seconds=10))
    assert (verdict.state, verdict.reason) == (GateState.CLOSED, RejectReason.EXPIRED)
    assert await redis.get("coupon:available:1") == b"false"
    assert len(await holders(redis)) == 0


async def test_closing_refuses_at_once_and_reopening_keeps_the_reservations(redis: Redis) -> None:
    gate = await opened(redis, quantity=5)
    await gate.admit(1, 7, "r", NOW)
    await gate.close(1, RejectReason.NOT_OPEN)
    assert (await gate.admit(1, 8, "s", NOW)).reason is RejectReason.NOT_OPEN
    assert await redis.get("coupon:available:1") == b"false"
    assert await gate.open(coupon(quantity=5), NOW)
    assert (await gate.admit(1, 8, "s", NOW)).state is GateState.ADMITTED
    assert await holders(redis) == {b"7": b"r", b"8": b"s"}
    assert await redis.get("coupon:available:1") == b"true"


async def test_concurrent_admissions_never_reserve_more_than_the_quantity(redis: Redis) -> None:
    gate = await opened(redis, quantity=50)
    verdicts = await asyncio.gather(*(gate.admit(1, u % 300, f"r{u}", NOW) for u in range(1000)))
    admitted = [v for v in verdicts if v.state is GateState.ADMITTED]
    assert len(admitted) == 50
    assert len(await holders(redis)) == 50
    assert await gate_field(redis, "stock") == b"0"


async def test_a_flushed_gate_is_missing_and_a_fenced_one_is_rebuilding(redis: Redis) -> None:
    gate = await opened(redis)
    await redis.flushdb()
    assert (await gate.admit(1, 7, "r", NOW)).state is GateState.MISSING
    assert await gate.missing([1, 2]) == [1, 2]
    assert await gate.begin_rebuild(1, "t1", NOW, lease_s=30)
    assert not await gate.begin_rebuild(1, "t2", NOW, lease_s=30)  # someone else is rebuilding
    assert (await gate.admit(1, 7, "r", NOW)).state is GateState.REBUILDING
    await gate.release(1, 7, "r")  # a release into a fenced gate changes nothing
    assert len(await holders(redis)) == 0


async def test_finishing_a_rebuild_writes_the_databases_reservations(redis: Redis) -> None:
    gate = RedisReservingGate(redis)
    assert await gate.begin_rebuild(1, "t", NOW, lease_s=30)
    snapshot = GateSnapshot(coupon(quantity=5, issued=1), {10: "issued", 11: "pending"})
    assert not await gate.finish_rebuild(1, "not-mine", snapshot, NOW)
    assert await gate.finish_rebuild(1, "t", snapshot, NOW)
    assert await holders(redis) == {b"10": b"issued", b"11": b"pending"}
    assert await gate_field(redis, "stock") == b"3"
    assert (await gate.admit(1, 11, "again", NOW)).state is GateState.DUPLICATE
    assert (await gate.admit(1, 12, "new", NOW)).state is GateState.ADMITTED


async def test_a_stale_fence_of_a_dead_rebuilder_can_be_taken_over(redis: Redis) -> None:
    gate = RedisReservingGate(redis)
    assert await gate.begin_rebuild(1, "dead", NOW, lease_s=1)
    assert await gate.begin_rebuild(1, "alive", NOW + timedelta(seconds=2), lease_s=30)


async def test_an_aborted_rebuild_returns_the_gate_to_what_it_held(redis: Redis) -> None:
    gate = await opened(redis, quantity=2)
    await gate.admit(1, 7, "r", NOW)
    assert await gate.begin_rebuild(1, "t", NOW, lease_s=30)
    await gate.abort_rebuild(1, "other")  # not ours: nothing happens
    assert (await gate.admit(1, 8, "s", NOW)).state is GateState.REBUILDING
    await gate.abort_rebuild(1, "t")
    assert (await gate.admit(1, 8, "s", NOW)).state is GateState.ADMITTED
    await redis.flushdb()
    assert await gate.begin_rebuild(1, "u", NOW, lease_s=30)
    await gate.abort_rebuild(1, "u")
    assert (await gate.admit(1, 9, "x", NOW)).state is GateState.MISSING


async def test_a_reservation_stays_unconfirmed_until_confirmed_or_released(redis: Redis) -> None:
    gate = await opened(redis, quantity=3)
    await gate.admit(1, 7, "r7", NOW)
    await gate.admit(1, 8, "r8", NOW + timedelta(seconds=2))
    assert await gate.unconfirmed(1, NOW + timedelta(seconds=1), 10) == [(7, "r7")]  # only the older one
    assert await gate.unconfirmed(1, NOW + timedelta(seconds=3), 10) == [(7, "r7"), (8, "r8")]
    await gate.confirm(1, [(7, "r7")])
    await gate.release(1, 8, "r8")
    assert await gate.unconfirmed(1, NOW + timedelta(seconds=3), 10) == []
    assert await holders(redis) == {b"7": b"r7"}  # confirming keeps the unit; releasing gave r8's back


async def test_a_rebuild_from_the_database_leaves_nothing_unconfirmed(redis: Redis) -> None:
    gate = await opened(redis, quantity=3)
    await gate.admit(1, 7, "r7", NOW)
    assert await gate.begin_rebuild(1, "t", NOW, lease_s=30)
    assert await gate.finish_rebuild(1, "t", GateSnapshot(coupon(quantity=3), {7: "r7"}), NOW)
    assert await gate.unconfirmed(1, NOW + timedelta(seconds=10), 10) == []


async def evalsha_calls(redis: Redis) -> int:
    stats: dict[str, dict[str, int]] = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_admissions_of_one_tick_go_as_one_script_call_and_are_decided_in_arrival_order(redis: Redis) -> None:
    gate = await opened(redis, quantity=10)
    before = await evalsha_calls(redis)
    # 40 callers in one tick, user 5 twice: one call decides them all, as one at a time would in this order.
    users = [*range(1, 6), 5, *range(6, 40)]
    verdicts = await asyncio.gather(*(gate.admit(1, u, f"r{i}", NOW) for i, u in enumerate(users)))
    assert await evalsha_calls(redis) - before == 1
    states = [v.state for v in verdicts]
    assert states[:5] == [GateState.ADMITTED] * 5
    assert states[5] is GateState.DUPLICATE  # user 5 again, within the same call
    assert states[6:11] == [GateState.ADMITTED] * 5
    assert {(v.state, v.reason) for v in verdicts[11:]} == {(GateState.CLOSED, RejectReason.SOLD_OUT)}
    assert await gate_field(redis, "stock") == b"0"
    assert len(await holders(redis)) == 10


async def test_a_sold_out_coupon_is_refused_in_process_until_a_unit_comes_back(redis: Redis) -> None:
    gate = await opened(redis, quantity=2)
    stop = asyncio.Event()
    watching = asyncio.create_task(gate.sold_out.watch(stop))
    try:

        async def subscribed() -> bool:
            return gate.sold_out.active

        await eventually(subscribed, bool, timeout=5, what="the gate-change subscription")
        await asyncio.gather(gate.admit(1, 7, "r7", NOW), gate.admit(1, 8, "r8", NOW))  # takes the last unit

        async def known() -> bool:
            return 1 in gate.sold_out.known

        await eventually(known, bool, timeout=5, what="the sold-out state read once")
        calls = await evalsha_calls(redis)
        refused = await gate.admit(1, 9, "r9", NOW)
        again = await gate.admit(1, 7, "r7b", NOW)
        assert (refused.state, refused.reason) == (GateState.CLOSED, RejectReason.SOLD_OUT)
        assert again.state is GateState.DUPLICATE  # a holder hears ALREADY_REQUESTED, exactly as from the script
        assert await evalsha_calls(redis) == calls  # no round trip for either

        await gate.release(1, 8, "r8")  # a unit comes back: every API process forgets at once

        async def forgotten() -> bool:
            return 1 not in gate.sold_out.known

        await eventually(forgotten, bool, timeout=5, what="the release heard")
        assert (await gate.admit(1, 9, "r9", NOW)).state is GateState.ADMITTED
    finally:
        stop.set()
        await watching


async def test_without_the_subscription_nothing_is_answered_in_process(redis: Redis) -> None:
    gate = await opened(redis, quantity=1)
    await gate.admit(1, 7, "r7", NOW)
    calls = await evalsha_calls(redis)
    assert (await gate.admit(1, 8, "r8", NOW)).reason is RejectReason.SOLD_OUT
    assert await evalsha_calls(redis) == calls + 1
    assert gate.sold_out.known == {}


async def test_a_flush_no_message_announces_is_noticed_by_the_recheck(redis: Redis) -> None:
    gate = await opened(redis, quantity=1)
    gate.sold_out.recheck_s = 0.2
    stop = asyncio.Event()
    watching = asyncio.create_task(gate.sold_out.watch(stop))
    try:

        async def subscribed() -> bool:
            return gate.sold_out.active

        await eventually(subscribed, bool, timeout=5, what="the gate-change subscription")
        await gate.admit(1, 7, "r7", NOW)

        async def known() -> bool:
            return 1 in gate.sold_out.known

        await eventually(known, bool, timeout=5, what="the sold-out state read once")
        await redis.flushdb()  # Redis restarted empty under a live subscription: no message says so
        await eventually(known, lambda k: not k, timeout=5, what="the flush noticed")
        assert (await gate.admit(1, 8, "r8", NOW)).state is GateState.MISSING  # so the gate gets rebuilt
    finally:
        stop.set()
        await watching


async def redis_now(redis: Redis) -> datetime:
    seconds, micros = await redis.time()
    return datetime.fromtimestamp(seconds + micros / 1e6, UTC)


async def test_a_scheduled_gate_opens_by_the_redis_servers_clock_whatever_the_callers(redis: Redis) -> None:
    opens_at = await redis_now(redis) + timedelta(milliseconds=400)
    gate = RedisReservingGate(redis)
    scheduled = dataclasses.replace(coupon(quantity=2), opens_at=opens_at)
    assert await gate.open(scheduled, NOW, created=True)
    # A caller whose clock is an hour ahead is refused all the same, told when and how long to wait.
    verdict = await gate.admit(1, 7, "r7", NOW + timedelta(hours=1) - timedelta(seconds=1))
    assert (verdict.state, verdict.reason) == (GateState.CLOSED, RejectReason.NOT_OPEN)
    assert verdict.opens_at is not None
    assert verdict.opens_in_s is not None
    assert timedelta(0) <= verdict.opens_at - opens_at < timedelta(milliseconds=1)
    assert 0 < verdict.opens_in_s <= 0.401  # whole milliseconds: the opening rounded up, the clock down
    assert len(await holders(redis)) == 0  # a refusal writes nothing

    async def admitted() -> GateState:
        return (await gate.admit(1, 7, "r7", NOW)).state

    await eventually(admitted, lambda s: s is GateState.ADMITTED, timeout=5, interval=0.01, what="opening")
    assert await redis_now(redis) >= opens_at


async def test_terms_follow_an_operators_change_but_never_below_the_units_reserved(redis: Redis) -> None:
    gate = await opened(redis, quantity=3)
    for user in (1, 2):
        await gate.admit(1, user, f"r{user}", NOW)
    below = await gate.set_terms(coupon(quantity=1))
    assert (below.outcome, below.holders) == (TermsOutcome.BELOW_HOLDERS, 2)
    assert await gate_field(redis, "quantity") == b"3"
    later = datetime.now(UTC) + timedelta(minutes=10)  # NOW is when the module was imported: maybe minutes ago
    raised = await gate.set_terms(dataclasses.replace(coupon(quantity=5), opens_at=later))
    assert raised.outcome is TermsOutcome.APPLIED
    assert (await gate_field(redis, "stock"), await gate_field(redis, "quantity")) == (b"3", b"5")
    assert (await gate.admit(1, 3, "r3", NOW)).reason is RejectReason.NOT_OPEN  # the new opening time holds
    lowered = await gate.set_terms(coupon(quantity=2))
    assert lowered.outcome is TermsOutcome.APPLIED
    assert await gate_field(redis, "stock") == b"0"
    assert await redis.get("coupon:available:1") == b"false"  # the report's flag follows: sold out
    assert (await gate.set_terms(coupon(quantity=9, expires_in=timedelta(hours=2)))).outcome is TermsOutcome.APPLIED
    assert await gate.begin_rebuild(1, "t", NOW, lease_s=30)
    assert (await gate.set_terms(coupon(quantity=9))).outcome is TermsOutcome.REBUILDING
    await redis.flushdb()
    assert (await gate.set_terms(coupon(quantity=9))).outcome is TermsOutcome.MISSING
    assert await gate.missing([1]) == [1]  # nothing was written into a missing gate


async def test_a_rebuild_keeps_the_opening_time(redis: Redis) -> None:
    gate = RedisReservingGate(redis)
    scheduled = dataclasses.replace(coupon(quantity=2), opens_at=datetime.now(UTC) + timedelta(minutes=10))
    assert await gate.begin_rebuild(1, "t", NOW, lease_s=30)
    assert await gate.finish_rebuild(1, "t", GateSnapshot(scheduled, {}), NOW)
    assert (await gate.admit(1, 7, "r7", NOW)).reason is RejectReason.NOT_OPEN
