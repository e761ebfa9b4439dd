"""The admission gate in Redis: one Lua script per request checks everything and, only then, reserves one
unit for this user. Its keys carry the coupon id as a hash tag, so each script touches one Redis
Cluster slot:

- ``coupon:{id}:gate``: hash of ``open`` (1/0), ``reason`` (why closed), ``expires_at`` (epoch ms),
  ``quantity``, ``stock`` (units not yet reserved), ``opens_at`` (epoch ms by the Redis server's clock,
  ``0``: no schedule), and ``rebuilding`` while it is rebuilt;
- ``coupon:{id}:holders``: hash user id -> request id holding that user's unit (issued or pending).
  Releasing names the request, so a late or repeated release can never free another request's unit.
- ``coupon:{id}:fresh``: sorted set of ``user:request`` reserved but not yet confirmed recorded, scored
  by reservation time (ms). A reservation whose API died before recording it is found there and
  released (service/orphans.py), within seconds rather than at the next reconcile.

The gate also keeps the report's flag ``coupon:available:{couponId}`` (``true``/``false``) and two companions,
``coupon:closed-reason:{couponId}`` and ``coupon:expires-at:{couponId}``. The flag lives in another
cluster slot than the gate, so the reserving gate sets it right after its script (when the last unit
is reserved, when a released unit reopens a sold-out coupon, when the gate closes or opens): it is a
view for the report's readers; the gate itself never reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis.exceptions
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from couponrush.domain.model import Coupon, GateSnapshot, RejectReason
from couponrush.service.logs import failed
from couponrush.service.ports import GateState, GateTerms, GateUnreachable, GateVerdict, TermsOutcome

log = logging.getLogger(__name__)


def available_key(coupon_id: int) -> str:
    return f"coupon:available:{coupon_id}"


def closed_reason_key(coupon_id: int) -> str:
    return f"coupon:closed-reason:{coupon_id}"


def expires_at_key(coupon_id: int) -> str:
    return f"coupon:expires-at:{coupon_id}"


def gate_key(coupon_id: int) -> str:
    return f"coupon:{{{coupon_id}}}:gate"


def holders_key(coupon_id: int) -> str:
    return f"coupon:{{{coupon_id}}}:holders"


def fresh_key(coupon_id: int) -> str:
    return f"coupon:{{{coupon_id}}}:fresh"


def _keys(coupon_id: int) -> tuple[str, str, str]:
    return gate_key(coupon_id), holders_key(coupon_id), fresh_key(coupon_id)


def _never_connected(exc: redis.exceptions.ConnectionError) -> bool:
    """redis-py's words for a connection that was never made (so no command was sent)."""
    return "connecting to" in str(exc)


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _opens_at_ms(coupon: Coupon) -> str:
    """The gate's ``opens_at``: epoch ms rounded up (never a fraction of a millisecond early), or "0" for a
    coupon that opens as soon as it is open."""
    if coupon.opens_at is None:
        return "0"
    micros = (coupon.opens_at - _EPOCH) // timedelta(microseconds=1)
    return str(-(-micros // 1000))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _from_epoch_ms(value: bytes) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


# KEYS: flag, reason, expires-at. ARGV: flag value, reason ("" for none), expires-at ms, only-if-missing.
_SET_FLAG = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3])
if ARGV[2] == '' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class ReportFlag:
    """Writes the report's flag and its companions (one slot per key; each write is one script)."""

    redis: Redis

    async def set(
        self, coupon_id: int, reason: RejectReason | None, expires_at_ms: int, *, only_if_missing: bool = False
    ) -> None:
        await self.redis.eval(  # type: ignore[misc]
            _SET_FLAG,
            3,
            available_key(coupon_id),
            closed_reason_key(coupon_id),
            expires_at_key(coupon_id),
            "true" if reason is None else "false",
            "" if reason is None else reason.value,
            str(expires_at_ms),
            "1" if only_if_missing else "0",
        )

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        await self.redis.mset({available_key(coupon_id): "false", closed_reason_key(coupon_id): reason.value})


# KEYS: gate, holders, fresh. ARGV: user id, request id, now ms.
# Every check comes before any write, so a refusal changes nothing. A scheduled opening (``opens_at``,
# epoch ms, "0" or absent: none) is judged by this Redis server's clock (TIME), the one clock every API
# process and host shares: no host with a fast clock opens early. Refused with the opening time and the
# milliseconds left. (Redis >= 5 replicates a script's effects, so writing after TIME is allowed.)
_ADMIT = """
local g = redis.call('HMGET', KEYS[1], 'rebuilding', 'open', 'reason', 'expires_at', 'stock', 'opens_at')
if g[1] then return {'REBUILDING'} end
if not g[2] then return {'MISSING'} end
if g[2] ~= '1' then return {'CLOSED', g[3] or 'NOT_OPEN'} end
if tonumber(ARGV[3]) >= tonumber(g[4]) then return {'CLOSED', 'EXPIRED'} end
if g[6] and g[6] ~= '0' then
  local t = redis.call('TIME')
  local wait = tonumber(g[6]) - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  if wait > 0 then return {'CLOSED', 'NOT_OPEN', g[6], tostring(wait)} end
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'DUPLICATE'} end
if tonumber(g[5]) <= 0 then return {'CLOSED', 'SOLD_OUT'} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1] .. ':' .. ARGV[2])
return {'ADMITTED', redis.call('HINCRBY', KEYS[1], 'stock', -1)}
"""

# KEYS: gate, holders, fresh. ARGV: user id, request id. Returns the stock after, or -1 if nothing was released.
# A gate without state (flushed) or being rebuilt is left alone: the rebuild counts from the database.
_RELEASE = """
local g = redis.call('HMGET', KEYS[1], 'rebuilding', 'open')
if g[1] or not g[2] then return -1 end
redis.call('ZREM', KEYS[3], ARGV[1] .. ':' .. ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'stock', 1)
"""

# KEYS: fresh. ARGV: reserved before (ms), limit. The reservations older than that, still unconfirmed.
_STALE = "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))"

# KEYS: gate. ARGV: open flag, reason. Only where the gate has state (else 0: a rebuild is needed).
_SET_OPEN = """
if redis.call('HEXISTS', KEYS[1], 'open') == 0 or redis.call('HEXISTS', KEYS[1], 'rebuilding') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'open', ARGV[1], 'reason', ARGV[2])
return 1
"""

# KEYS: gate, holders, fresh. ARGV: open, reason, expires_at, quantity, stock, opens_at (ms, "0": none).
# Creates a gate only if none exists.
_INIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'open', ARGV[1], 'reason', ARGV[2], 'expires_at', ARGV[3], 'quantity', ARGV[4],
           'stock', ARGV[5], 'opens_at', ARGV[6])
return 1
"""

# KEYS: gate, holders. ARGV: quantity, expires_at ms, opens_at ms ("0": none). An operator's change of a
# coupon: only where the gate has state and is not fenced, and never below the units reserved (stock
# = quantity - holders, the gate's invariant). Returns {outcome, holders}.
_SET_TERMS = """
local g = redis.call('HMGET', KEYS[1], 'rebuilding', 'open')
if g[1] then return {'REBUILDING', 0} end
if not g[2] then return {'MISSING', 0} end
local held = redis.call('HLEN', KEYS[2])
if tonumber(ARGV[1]) < held then return {'BELOW_HOLDERS', held} end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'stock', tonumber(ARGV[1]) - held, 'expires_at', ARGV[2],
           'opens_at', ARGV[3])
return {'APPLIED', held}
"""

# KEYS: gate. ARGV: token, now ms, lease ms. Fences admissions; a stale fence (rebuilder died) can be taken over.
_BEGIN_REBUILD = """
local holder = redis.call('HGET', KEYS[1], 'rebuilding')
if holder and holder ~= ARGV[1] then
  local until_ms = tonumber(redis.call('HGET', KEYS[1], 'rebuild_until') or '0')
  if tonumber(ARGV[2]) < until_ms then return 0 end
end
redis.call('HSET', KEYS[1], 'rebuilding', ARGV[1], 'rebuild_until', tonumber(ARGV[2]) + tonumber(ARGV[3]))
return 1
"""

# KEYS: gate, holders, fresh. ARGV: token, open, reason, expires_at, quantity, stock, opens_at, then user/request
# pairs. The snapshot comes from the database, so every reservation in it is recorded: nothing is fresh.
_FINISH_REBUILD = """
if redis.call('HGET', KEYS[1], 'rebuilding') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'open', ARGV[2], 'reason', ARGV[3], 'expires_at', ARGV[4], 'quantity', ARGV[5],
           'stock', ARGV[6], 'opens_at', ARGV[7])
return 1
"""

# KEYS: gate. ARGV: token. Lifts the fence; a gate that had no state goes back to missing.
_ABORT_REBUILD = """
if redis.call('HGET', KEYS[1], 'rebuilding') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'open') == 1 then
  redis.call('HDEL', KEYS[1], 'rebuilding', 'rebuild_until')
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS: gate. Returns open, reason, expires_at, stock (for the report's flag).
_READ = "return redis.call('HMGET', KEYS[1], 'open', 'reason', 'expires_at', 'stock')"


def _gate_fields(coupon: Coupon, now: datetime) -> tuple[str, str]:
    """The gate's own ``open``/``reason``: only an administrator's close is stored; expiry and stock are derived."""
    reason = coupon.closed_reason(now)
    if reason is RejectReason.NOT_OPEN:
        return "0", reason.value
    return "1", ""


@dataclass(frozen=True, slots=True)
class RedisReservingGate:
    """Admits a request only by reserving one unit for it, atomically, in one round trip."""

    redis: Redis
    # The hot scripts go by SHA (EVALSHA, reloaded by redis-py if the server lost them).
    _admit: AsyncScript = field(init=False, repr=False)
    _release: AsyncScript = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_admit", self.redis.register_script(_ADMIT))
        object.__setattr__(self, "_release", self.redis.register_script(_RELEASE))

    @property
    def flag(self) -> ReportFlag:
        return ReportFlag(self.redis)

    async def admit(self, coupon_id: int, user_id: int, request_id: str, now: datetime) -> GateVerdict:
        try:
            answer = await self._admit(keys=_keys(coupon_id), args=(user_id, request_id, _epoch_ms(now)))
        except redis.exceptions.ConnectionError as exc:
            if _never_connected(exc):
                raise GateUnreachable(f"Redis is unreachable: {exc}") from exc
            raise
        state = answer[0].decode()
        if state == "ADMITTED":
            if int(answer[1]) == 0:  # this request took the last unit: the report's flag turns false now
                try:
                    await self.flag.close(coupon_id, RejectReason.SOLD_OUT)
                except Exception as exc:
                    # The unit is reserved; the flag is only a view, and the worker sets it after commit.
                    failed(log, exc, "could not turn the flag of coupon %s false", coupon_id)
            return GateVerdict(GateState.ADMITTED)
        if state == "CLOSED":
            reason = RejectReason(answer[1].decode())
            if reason is RejectReason.EXPIRED:
                await self.close(coupon_id, reason)
            if len(answer) == 4:  # scheduled: not open yet by the Redis server's clock
                opens_at, wait_ms = _from_epoch_ms(answer[2]), int(answer[3])
                return GateVerdict(GateState.CLOSED, reason, opens_at=opens_at, opens_in_s=wait_ms / 1000)
            return GateVerdict(GateState.CLOSED, reason)
        return GateVerdict(GateState[state])

    async def release(self, coupon_id: int, user_id: int, request_id: str) -> None:
        stock = await self._release(keys=_keys(coupon_id), args=(user_id, request_id))
        if int(stock) == 1:  # a sold-out coupon has a unit again
            await self._refresh_flag(coupon_id)

    async def open(self, coupon: Coupon, now: datetime, *, created: bool = False) -> bool:
        is_open, reason = _gate_fields(coupon, now)
        if created:
            # A new coupon has no requests yet, so its whole quantity is stock.
            done = await self.redis.eval(  # type: ignore[misc]
                _INIT,
                3,
                *_keys(coupon.id),
                is_open,
                reason,
                str(_epoch_ms(coupon.expired_at)),
                str(coupon.quantity),
                str(coupon.quantity),
                _opens_at_ms(coupon),
            )
        else:
            # An existing coupon's stock depends on its pending requests: only flip ``open`` where the
            # gate has state; otherwise the caller rebuilds it from the database.
            done = await self.redis.eval(_SET_OPEN, 1, gate_key(coupon.id), is_open, reason)  # type: ignore[misc]
        if not done:
            return False
        await self._refresh_flag(coupon.id)
        return True

    async def close(self, coupon_id: int, reason: RejectReason) -> None:
        if reason is RejectReason.NOT_OPEN:
            await self.redis.eval(_SET_OPEN, 1, gate_key(coupon_id), "0", reason.value)  # type: ignore[misc]
        # Expiry and stock are checked by the script itself; the flag follows in every case.
        await self.flag.close(coupon_id, reason)

    async def set_terms(self, coupon: Coupon) -> GateTerms:
        outcome, held = await self.redis.eval(  # type: ignore[misc]
            _SET_TERMS,
            2,
            gate_key(coupon.id),
            holders_key(coupon.id),
            str(coupon.quantity),
            str(_epoch_ms(coupon.expired_at)),
            _opens_at_ms(coupon),
        )
        terms = GateTerms(TermsOutcome(outcome.decode()), int(held))
        if terms.outcome is TermsOutcome.APPLIED:
            await self._refresh_flag(coupon.id)
        return terms

    async def missing(self, coupon_ids: Sequence[int]) -> list[int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for coupon_id in coupon_ids:
                pipe.hexists(gate_key(coupon_id), "open")
            present = await pipe.execute()
        return [c for c, has in zip(coupon_ids, present, strict=True) if not has]

    async def begin_rebuild(self, coupon_id: int, token: str, now: datetime, lease_s: float) -> bool:
        fenced = await self.redis.eval(  # type: ignore[misc]
            _BEGIN_REBUILD, 1, gate_key(coupon_id), token, str(_epoch_ms(now)), str(int(lease_s * 1000))
        )
        return bool(fenced)

    async def finish_rebuild(self, coupon_id: int, token: str, snapshot: GateSnapshot, now: datetime) -> bool:
        coupon = snapshot.coupon
        is_open, reason = _gate_fields(coupon, now)
        pairs: list[str] = []
        for user_id, request_id in snapshot.reservations.items():
            pairs.extend((str(user_id), request_id))
        done = await self.redis.eval(  # type: ignore[misc]
            _FINISH_REBUILD,
            3,
            *_keys(coupon_id),
            token,
            is_open,
            reason,
            str(_epoch_ms(coupon.expired_at)),
            str(coupon.quantity),
            str(snapshot.stock),
            _opens_at_ms(coupon),
            *pairs,
        )
        if done:
            await self._refresh_flag(coupon_id)
        return bool(done)

    async def abort_rebuild(self, coupon_id: int, token: str) -> None:
        await self.redis.eval(_ABORT_REBUILD, 1, gate_key(coupon_id), token)  # type: ignore[misc]

    async def unconfirmed(self, coupon_id: int, reserved_before: datetime, limit: int) -> list[tuple[int, str]]:
        members = await self.redis.eval(  # type: ignore[misc]
            _STALE, 1, fresh_key(coupon_id), str(_epoch_ms(reserved_before)), str(limit)
        )
        found: list[tuple[int, str]] = []
        for member in members:
            user, _, request = member.decode().partition(":")
            found.append((int(user), request))
        return found

    async def confirm(self, coupon_id: int, reservations: Sequence[tuple[int, str]]) -> None:
        if reservations:
            await self.redis.zrem(fresh_key(coupon_id), *(f"{u}:{r}" for u, r in reservations))

    async def _refresh_flag(self, coupon_id: int) -> None:
        is_open, reason, expires_at, stock = await self.redis.eval(_READ, 1, gate_key(coupon_id))  # type: ignore[misc]
        if is_open is None:
            return
        closed: RejectReason | None = None
        if is_open != b"1":
            closed = RejectReason(reason.decode()) if reason else RejectReason.NOT_OPEN
        elif int(stock) <= 0:
            closed = RejectReason.SOLD_OUT
        await self.flag.set(coupon_id, closed, int(expires_at))
