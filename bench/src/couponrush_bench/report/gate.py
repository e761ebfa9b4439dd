"""The report's admission gate: admit while ``coupon:available:{id}`` is ``true``. It reserves nothing, so
in a rush it tells OK to more users than there are coupons (the worker then refuses the surplus).

The flag and its companions are the ones the product's reserving gate keeps as a view for the report's
readers (``couponrush.adapters.gate.ReportFlag``); here they are the whole gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from redis.asyncio import Redis

from couponrush.adapters.gate import ReportFlag, available_key, closed_reason_key, expires_at_key
from couponrush.domain.model import Coupon, GateSnapshot, RejectReason
from couponrush.service.ports import CouponStore, GateState, GateTerms, GateVerdict, TermsOutcome


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class FlagState:
    open: bool
    reason: RejectReason | None  # why it is closed, when it says
    expires_at_ms: int | None


class Flags(Protocol):
    """Where the flags live: ``coupon:available:{id}``, with ``coupon:closed-reason:{id}`` and
    ``coupon:expires-at:{id}``."""

    async def read(self, coupon_id: int) -> FlagState | None:
        """The coupon's flag, None when there is none (never opened, or Redis lost it)."""
        ...

    async def set(
        self, coupon_id: int, reason: RejectReason | None, expires_at_ms: int, *, only_if_missing: bool = False
    ) -> None:
        """Open (``reason`` None) or closed for ``reason``; with ``only_if_missing``, only where there is no flag."""
        ...

    async def close(self, coupon_id: int, reason: RejectReason) -> None: ...

    async def missing(self, coupon_ids: Sequence[int]) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class RedisFlags:
    redis: Redis
    writer: ReportFlag = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "writer", ReportFlag(self.redis))

    async def read(self, coupon_id: int) -> FlagState | None:
        flag, reason, expires_at = await self.redis.mget(
            available_key(coupon_id), closed_reason_key(coupon_id), expires_at_key(coupon_id)
        )
        if flag is None:
            return None
        return FlagState(
            open=flag == b"true",
            reason=RejectReason(reason.decode()) if reason else None,
            expires_at_ms=int(expires_at) if expires_at is not None else None,
        )

    async def set(
        self, coupon_id: int, reason: RejectReason | None, expires_at_ms: int, *, only_if_missing: bool = False
    ) -> None:
        await self.writer.set(coupon_id, reason, expires_at_ms, only_if_missing=only_if_missing)

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        await self.writer.close(coupon_id, reason)

    async def missing(self, coupon_ids: Sequence[int]) -> list[int]:
        if not coupon_ids:
            return []
        flags = await self.redis.mget([available_key(c) for c in coupon_ids])
        return [c for c, flag in zip(coupon_ids, flags, strict=True) if flag is None]


@dataclass(frozen=True, slots=True)
class FlagGate:
    """The report's gate, behind the product's ``Gate`` port. Reserves nothing: ``release`` has nothing to give
    back and a rebuild has nothing to fence; a lost flag is restored from the database at once."""

    flags: Flags
    coupons: CouponStore

    async def admit(self, coupon_id: int, user_id: int, request_id: str, now: datetime) -> GateVerdict:
        state = await self.flags.read(coupon_id)
        if state is None:
            state = await self._restore(coupon_id, now)
            if state is None:  # no such coupon: the admission answers UNKNOWN_COUPON
                return GateVerdict(GateState.MISSING)
        if not state.open:
            return GateVerdict(GateState.CLOSED, state.reason or RejectReason.SOLD_OUT)
        if state.expires_at_ms is not None and epoch_ms(now) >= state.expires_at_ms:
            await self.close(coupon_id, RejectReason.EXPIRED)
            return GateVerdict(GateState.CLOSED, RejectReason.EXPIRED)
        return GateVerdict(GateState.ADMITTED)

    async def _restore(self, coupon_id: int, now: datetime) -> FlagState | None:
        coupon = await self.coupons.get(coupon_id)
        if coupon is None:
            return None
        await self._set(coupon, now, only_if_missing=True)  # never re-open what a worker closed meanwhile
        return await self.flags.read(coupon_id)

    async def _set(self, coupon: Coupon, now: datetime, *, only_if_missing: bool = False) -> None:
        await self.flags.set(
            coupon.id, coupon.closed_reason(now), epoch_ms(coupon.expired_at), only_if_missing=only_if_missing
        )

    async def release(self, coupon_id: int, user_id: int, request_id: str) -> None:
        return None  # nothing was reserved

    async def open(self, coupon: Coupon, now: datetime, *, created: bool = False) -> bool:
        await self._set(coupon, now)
        return True

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        await self.flags.close(coupon_id, reason)

    async def set_terms(self, coupon: Coupon) -> GateTerms:
        # The report has no operator changes during a drop; the flag follows the coupon (it reserves nothing).
        await self._set(coupon, datetime.now(UTC))
        return GateTerms(TermsOutcome.APPLIED)

    async def missing(self, coupon_ids: Sequence[int]) -> list[int]:
        return await self.flags.missing(coupon_ids)

    async def begin_rebuild(self, coupon_id: int, token: str, now: datetime, lease_s: float) -> bool:
        return True  # nothing reserved, nothing to fence

    async def finish_rebuild(self, coupon_id: int, token: str, snapshot: GateSnapshot, now: datetime) -> bool:
        await self._set(snapshot.coupon, now, only_if_missing=True)
        return True

    async def abort_rebuild(self, coupon_id: int, token: str) -> None:
        return None

    async def unconfirmed(self, coupon_id: int, reserved_before: datetime, limit: int) -> list[tuple[int, str]]:
        return []  # nothing is reserved, so nothing waits to be confirmed

    async def confirm(self, coupon_id: int, reservations: Sequence[tuple[int, str]]) -> None:
        return None
