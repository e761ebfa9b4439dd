"""The report's Redis gate: ``coupon:available:{couponId}`` is ``true`` or ``false``.

Two companion keys let a refusal say why without a database read:
``coupon:closed-reason:{couponId}`` (SOLD_OUT, NOT_OPEN, EXPIRED) and
``coupon:expires-at:{couponId}`` (epoch milliseconds), so an expired coupon is refused at
the gate even before anything turned its flag off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis

from couponrush.domain.model import Coupon, RejectReason
from couponrush.service.ports import GateState, GateVerdict


def available_key(coupon_id: int) -> str:
    return f"coupon:available:{coupon_id}"


def closed_reason_key(coupon_id: int) -> str:
    return f"coupon:closed-reason:{coupon_id}"


def expires_at_key(coupon_id: int) -> str:
    return f"coupon:expires-at:{coupon_id}"


# KEYS: flag, reason, expires-at. ARGV: flag value, reason ("" for none), expires-at ms, only-if-missing.
_SYNC = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3])
if ARGV[2] == '' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class RedisFlagGate:
    redis: Redis

    async def check(self, coupon_id: int, now: datetime) -> GateVerdict:
        flag, reason, expires_at = await self.redis.mget(
            available_key(coupon_id), closed_reason_key(coupon_id), expires_at_key(coupon_id)
        )
        if flag is None:
            return GateVerdict(GateState.MISSING)
        if flag != b"true":
            known = reason.decode() if reason else RejectReason.SOLD_OUT.value
            return GateVerdict(GateState.CLOSED, RejectReason(known))
        if expires_at is not None and _epoch_ms(now) >= int(expires_at):
            await self.close(coupon_id, RejectReason.EXPIRED)
            return GateVerdict(GateState.CLOSED, RejectReason.EXPIRED)
        return GateVerdict(GateState.OPEN)

    async def sync(self, coupon: Coupon, now: datetime, *, only_if_missing: bool = False) -> None:
        reason = coupon.closed_reason(now)
        await self.redis.eval(  # type: ignore[misc]
            _SYNC,
            3,
            available_key(coupon.id),
            closed_reason_key(coupon.id),
            expires_at_key(coupon.id),
            "true" if reason is None else "false",
            "" if reason is None else reason.value,
            str(_epoch_ms(coupon.expired_at)),
            "1" if only_if_missing else "0",
        )

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        await self.redis.mset({available_key(coupon_id): "false", closed_reason_key(coupon_id): reason.value})
