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

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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


# KEYS: gate, holders, fresh. ARGV: now ms, then (user id, request id) pairs in arrival order.
# Returns one verdict per pair: 'A' admitted (a unit reserved for it), 'D' this user holds one already,
# or why not: a reason (SOLD_OUT, EXPIRED, NOT_OPEN...), MISSING (no state) or REBUILDING; then the
# stock left; then, for a coupon scheduled to open later, its opening (epoch ms) and the ms left.
# The coupon-wide checks come first and change nothing; each pair is then decided as a single
# admission would be, seeing the pairs before it. A scheduled opening (``opens_at``, epoch ms, "0" or
# absent: none) is judged by this Redis server's clock (TIME), the one clock every API process and host
# shares: no host with a fast clock opens early. (Redis >= 5 replicates a script's effects, so writing
# after TIME is allowed.)
_ADMIT = """
local g = redis.call('HMGET', KEYS[1], 'rebuilding', 'open', 'reason', 'expires_at', 'stock', 'opens_at')
local n = (#ARGV - 1) / 2
local out = {}
local all = nil
local wait = 0
if g[1] then all = 'REBUILDING'
elseif not g[2] then all = 'MISSING'
elseif g[2] ~= '1' then all = g[3] or 'NOT_OPEN'
elseif tonumber(ARGV[1]) >= tonumber(g[4]) then all = 'EXPIRED'
elseif g[6] and g[6] ~= '0' then
  local t = redis.call('TIME')
  wait = tonumber(g[6]) - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  if wait > 0 then all = 'NOT_OPEN' end
end
if all then
  for i = 1, n do out[i] = all end
  out[n + 1] = -1
  if wait > 0 then
    out[n + 2] = g[6]
    out[n + 3] = tostring(wait)
  end
  return out
end
local stock = tonumber(g[5])
local taken = 0
for i = 1, n do
  local user, request = ARGV[2 * i], ARGV[2 * i + 1]
  if redis.call('HEXISTS', KEYS[2], user) == 1 then
    out[i] = 'D'
  elseif stock <= 0 then
    out[i] = 'SOLD_OUT'
  else
    redis.call('HSET', KEYS[2], user, request)
    redis.call('ZADD', KEYS[3], ARGV[1], user .. ':' .. request)
    stock = stock - 1
    taken = taken + 1
    out[i] = 'A'
  end
end
if taken > 0 then redis.call('HINCRBY', KEYS[1], 'stock', -taken) end
out[n + 1] = stock
return out
"""

# Every change that can make a sold-out coupon's answer differ (a unit released, opened, closed, rebuilt)
# stamps the gate with the server's clock and announces the coupon on CHANNEL: each API process then
# forgets what it knew (SoldOutCache). Prepended to the scripts that change a gate.
CHANNEL = "couponrush:gate"
_CHANGED = (
    """
local function changed()
  local t = redis.call('TIME')
  local stamp = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'changed', stamp)
  redis.call('PUBLISH', '"""
    + CHANNEL
    + """', string.match(KEYS[1], '{(%d+)}') .. ':' .. stamp)
end
"""
)

# KEYS: gate, holders, fresh. ARGV: user id, request id. Returns the stock after, or -1 if nothing was released.
# A gate without state (flushed) or being rebuilt is left alone: the rebuild counts from the database.
_RELEASE = (
    _CHANGED
    + """
local g = redis.call('HMGET', KEYS[1], 'rebuilding', 'open')
if g[1] or not g[2] then return -1 end
redis.call('ZREM', KEYS[3], ARGV[1] .. ':' .. ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1])
local stock = redis.call('HINCRBY', KEYS[1], 'stock', 1)
changed()
return stock
"""
)

# KEYS: gate, holders. What an API process may answer a sold-out coupon with, without asking again: the
# change stamp, the expiry and every holder, only while the gate is open, not rebuilding and has no stock.
_SOLD_OUT_VIEW = """
local g = redis.call('HMGET', KEYS[1], 'rebuilding', 'open', 'stock', 'expires_at', 'changed')
if g[1] or g[2] ~= '1' or tonumber(g[3] or '1') > 0 then return {} end
local out = {g[5] or '0', g[4]}
for _, user in ipairs(redis.call('HKEYS', KEYS[2])) do out[#out + 1] = user end
return out
"""

# KEYS: fresh. ARGV: reserved before (ms), limit. The reservations older than that, still unconfirmed.
_STALE = "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))"

# KEYS: gate. ARGV: open flag, reason. Only where the gate has state (else 0: a rebuild is needed).
_SET_OPEN = (
    _CHANGED
    + """
if redis.call('HEXISTS', KEYS[1], 'open') == 0 or redis.call('HEXISTS', KEYS[1], 'rebuilding') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'open', ARGV[1], 'reason', ARGV[2])
changed()
return 1
"""
)

# KEYS: gate, holders, fresh. ARGV: open, reason, expires_at, quantity, stock, opens_at (ms, "0": none).
# Creates a gate only if none exists.
_INIT = (
    _CHANGED
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'open', ARGV[1], 'reason', ARGV[2], 'expires_at', ARGV[3], 'quantity', ARGV[4],
           'stock', ARGV[5], 'opens_at', ARGV[6])
changed()
return 1
"""
)

# KEYS: gate, holders. ARGV: quantity, expires_at ms, opens_at ms ("0": none). An operator's change of a
# coupon: only where the gate has state and is not fenced, and never below the units reserved (stock
# = quantity - holders, the gate's invariant). Returns {outcome, holders}.
_SET_TERMS = (
    _CHANGED
    + """
local g = redis.call('HMGET', KEYS[1], 'rebuilding', 'open')
if g[1] then return {'REBUILDING', 0} end
if not g[2] then return {'MISSING', 0} end
local held = redis.call('HLEN', KEYS[2])
if tonumber(ARGV[1]) < held then return {'BELOW_HOLDERS', held} end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'stock', tonumber(ARGV[1]) - held, 'expires_at', ARGV[2],
           'opens_at', ARGV[3])
changed()
return {'APPLIED', held}
"""
)

# KEYS: gate. ARGV: token, now ms, lease ms. Fences admissions; a stale fence (rebuilder died) can be taken over.
_BEGIN_REBUILD = (
    _CHANGED
    + """
local holder = redis.call('HGET', KEYS[1], 'rebuilding')
if holder and holder ~= ARGV[1] then
  local until_ms = tonumber(redis.call('HGET', KEYS[1], 'rebuild_until') or '0')
  if tonumber(ARGV[2]) < until_ms then return 0 end
end
redis.call('HSET', KEYS[1], 'rebuilding', ARGV[1], 'rebuild_until', tonumber(ARGV[2]) + tonumber(ARGV[3]))
changed()
return 1
"""
)

# KEYS: gate, holders, fresh. ARGV: token, open, reason, expires_at, quantity, stock, opens_at, then user/request
# pairs. The snapshot comes from the database, so every reservation in it is recorded: nothing is fresh.
_FINISH_REBUILD = (
    _CHANGED
    + """
if redis.call('HGET', KEYS[1], 'rebuilding') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'open', ARGV[2], 'reason', ARGV[3], 'expires_at', ARGV[4], 'quantity', ARGV[5],
           'stock', ARGV[6], 'opens_at', ARGV[7])
changed()
return 1
"""
)

# KEYS: gate. ARGV: token. Lifts the fence; a gate that had no state goes back to missing.
_ABORT_REBUILD = (
    _CHANGED
    + """
if redis.call('HGET', KEYS[1], 'rebuilding') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'open') == 1 then
  redis.call('HDEL', KEYS[1], 'rebuilding', 'rebuild_until')
  changed()
else
  redis.call('DEL', KEYS[1])
end
return 1
"""
)

# KEYS: gate. Returns open, reason, expires_at, stock (for the report's flag).
_READ = "return redis.call('HMGET', KEYS[1], 'open', 'reason', 'expires_at', 'stock')"


# The script's verdict codes, each one shared verdict (nothing is allocated per request).
_VERDICTS = {
    b"A": GateVerdict(GateState.ADMITTED),
    b"D": GateVerdict(GateState.DUPLICATE),
    b"MISSING": GateVerdict(GateState.MISSING),
    b"REBUILDING": GateVerdict(GateState.REBUILDING),
    **{reason.value.encode(): GateVerdict(GateState.CLOSED, reason) for reason in RejectReason},
}


Batch = Callable[[int, int, Sequence[tuple[int, str]]], Awaitable[list[GateVerdict]]]


class _Coalescer:
    """Every admission made in one event-loop tick, sent as one script call per coupon.

    Callers wait on a future each; the first caller of a tick schedules the dispatch (``call_soon``), which
    runs after every request that arrived in that tick has asked. Batches are sent at once (one round trip
    per coupon, all coupons concurrently), so a busy tick never waits for an earlier one. A failure of the
    call is every caller's failure.
    """

    def __init__(self, send: Batch) -> None:
        self.send = send
        self.waiting: dict[int, tuple[int, list[tuple[int, str]], list[asyncio.Future[GateVerdict]]]] = {}
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()

    def admit(self, coupon_id: int, user_id: int, request_id: str, now_ms: int) -> asyncio.Future[GateVerdict]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[GateVerdict] = loop.create_future()
        batch = self.waiting.get(coupon_id)
        if batch is None:
            batch = self.waiting[coupon_id] = (now_ms, [], [])
        batch[1].append((user_id, request_id))
        batch[2].append(future)
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._dispatch)
        return future

    def _dispatch(self) -> None:
        self.scheduled = False
        waiting, self.waiting = self.waiting, {}
        for coupon_id, (now_ms, pairs, futures) in waiting.items():
            self.background(self._send(coupon_id, now_ms, pairs, futures))

    async def _send(
        self, coupon_id: int, now_ms: int, pairs: list[tuple[int, str]], futures: list[asyncio.Future[GateVerdict]]
    ) -> None:
        try:
            verdicts = await self.send(coupon_id, now_ms, pairs)
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, verdict in zip(futures, verdicts, strict=True):
            if not future.done():
                future.set_result(verdict)

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


@dataclass(frozen=True, slots=True)
class _SoldOut:
    changed: int  # the gate's change stamp when this was read
    expires_ms: int
    holders: frozenset[int]


_SOLD_OUT = GateVerdict(GateState.CLOSED, RejectReason.SOLD_OUT)
_DUPLICATE = GateVerdict(GateState.DUPLICATE)


@dataclass
class SoldOutCache:
    """What this process knows of sold-out coupons, to refuse their requests without a Redis round trip.

    After sell-out nearly every request of a drop is refused; each one costing a script call is most of
    what the API does then. The answer is exactly the script's: ALREADY_REQUESTED to a holder, SOLD_OUT to
    anyone else, until the coupon expires. It is filled from one atomic read of the gate (its holders and
    change stamp) after a batch leaves it with no stock, and dropped when the gate announces a change on
    CHANNEL (a unit released, a reopen or close, a rebuild). A read older than the last change heard of is
    not kept. While the subscription is down nothing is kept: every request asks Redis, as without it.
    What is kept is read again every ``recheck_s`` (one call per sold-out coupon): a change no message
    announces (Redis flushed or restarted under a live subscription) is noticed within that, and the next
    request finds the gate gone and has it rebuilt.
    """

    redis: Redis
    known: dict[int, _SoldOut] = field(default_factory=dict)
    # The newest change stamp heard of, per coupon (a read older than it is stale).
    heard: dict[int, int] = field(default_factory=dict)
    active: bool = False
    recheck_s: float = 1.0
    _loading: set[int] = field(default_factory=set)
    _view: AsyncScript | None = None

    def answer(self, coupon_id: int, user_id: int, now_ms: int) -> GateVerdict | None:
        known = self.known.get(coupon_id)
        if known is None:
            return None
        if now_ms >= known.expires_ms:
            del self.known[coupon_id]  # expired since: the script says so
            return None
        return _DUPLICATE if user_id in known.holders else _SOLD_OUT

    async def learn(self, coupon_id: int, *, again: bool = False) -> None:
        """Read the gate of a coupon that just showed no stock, and keep it if it is sold out (``again``: read
        a kept one anew, dropping it unless it is still sold out and unchanged)."""
        if not self.active or coupon_id in self._loading or (coupon_id in self.known and not again):
            return
        self._loading.add(coupon_id)
        try:
            if self._view is None:
                self._view = self.redis.register_script(_SOLD_OUT_VIEW)
            view = await self._view(keys=(gate_key(coupon_id), holders_key(coupon_id)))
            kept = self.known.get(coupon_id)
            if not view or not self.active:
                self.known.pop(coupon_id, None)
                return
            changed = int(view[0])
            if kept is not None and kept.changed == changed:
                return  # as it was
            if changed >= self.heard.get(coupon_id, 0):
                self.known[coupon_id] = _SoldOut(changed, int(view[1]), frozenset(int(u) for u in view[2:]))
            else:
                self.known.pop(coupon_id, None)
        except Exception as exc:
            self.known.pop(coupon_id, None)
            failed(log, exc, "could not read the sold-out state of coupon %s", coupon_id)
        finally:
            self._loading.discard(coupon_id)

    def heard_change(self, message: bytes) -> None:
        coupon, _, stamp = message.partition(b":")
        coupon_id, changed = int(coupon), int(stamp)
        self.known.pop(coupon_id, None)
        if changed > self.heard.get(coupon_id, 0):
            self.heard[coupon_id] = changed

    def forget(self) -> None:
        self.active = False
        self.known.clear()
        self.heard.clear()

    async def watch(self, stop: asyncio.Event) -> None:
        """Listen for gate changes until ``stop``; (re)subscribe after a lost connection."""
        pause = 0.5
        while not stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                self.active = True
                pause = 0.5
                loop = asyncio.get_running_loop()
                recheck_at = loop.time() + self.recheck_s
                while not stop.is_set():
                    wait = max(0.0, min(1.0, recheck_at - loop.time()))
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                    if message is not None and message.get("type") == "message":
                        self.heard_change(message["data"])
                    if loop.time() >= recheck_at:
                        recheck_at = loop.time() + self.recheck_s
                        for coupon_id in list(self.known):
                            await self.learn(coupon_id, again=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed(log, exc, "lost the gate-change subscription; asking Redis for every request meanwhile")
            finally:
                self.forget()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
                pause = min(pause * 2, 10.0)


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
    _coalescer: _Coalescer = field(init=False, repr=False)
    # Sold-out coupons answered in-process; only used while ``sold_out.watch`` runs (the API starts it).
    sold_out: SoldOutCache = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_admit", self.redis.register_script(_ADMIT))
        object.__setattr__(self, "_release", self.redis.register_script(_RELEASE))
        object.__setattr__(self, "_coalescer", _Coalescer(self._admit_batch))
        object.__setattr__(self, "sold_out", SoldOutCache(self.redis))

    @property
    def flag(self) -> ReportFlag:
        return ReportFlag(self.redis)

    async def admit(self, coupon_id: int, user_id: int, request_id: str, now: datetime) -> GateVerdict:
        """Joins every admission to this coupon made in the same event-loop tick: one script call for all.

        A coupon this process knows to be sold out is answered at once (``SoldOutCache``)."""
        now_ms = _epoch_ms(now)
        known = self.sold_out.answer(coupon_id, user_id, now_ms)
        if known is not None:
            return known
        return await self._coalescer.admit(coupon_id, user_id, request_id, now_ms)

    async def _admit_batch(self, coupon_id: int, now_ms: int, pairs: Sequence[tuple[int, str]]) -> list[GateVerdict]:
        args: list[int | str] = [now_ms]
        for user_id, request_id in pairs:
            args.append(user_id)
            args.append(request_id)
        try:
            answer = await self._admit(keys=_keys(coupon_id), args=args)
        except redis.exceptions.ConnectionError as exc:
            if _never_connected(exc):
                raise GateUnreachable(f"Redis is unreachable: {exc}") from exc
            raise
        verdicts = [_VERDICTS[code] for code in answer[: len(pairs)]]
        stock = int(answer[len(pairs)])
        if len(answer) > len(pairs) + 1:  # scheduled: not open yet by the Redis server's clock
            opens_at, wait_ms = _from_epoch_ms(answer[-2]), int(answer[-1])
            scheduled = GateVerdict(
                GateState.CLOSED, RejectReason.NOT_OPEN, opens_at=opens_at, opens_in_s=wait_ms / 1000
            )
            return [scheduled] * len(pairs)
        if stock == 0 and self.sold_out.active:
            self._coalescer.background(self.sold_out.learn(coupon_id))
        if stock == 0 and any(v.state is GateState.ADMITTED for v in verdicts):
            # This batch took the last unit: the report's flag turns false now (a view: not on the answer's path).
            self._coalescer.background(self._flag_closed(coupon_id, RejectReason.SOLD_OUT))
        elif verdicts and verdicts[0].reason is RejectReason.EXPIRED:
            self._coalescer.background(self._flag_closed(coupon_id, RejectReason.EXPIRED))
        return verdicts

    async def _flag_closed(self, coupon_id: int, reason: RejectReason) -> None:
        try:
            await self.flag.close(coupon_id, reason)
        except Exception as exc:
            # The flag is only a view, and the worker sets it after commit.
            failed(log, exc, "could not turn the flag of coupon %s false", coupon_id)

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
