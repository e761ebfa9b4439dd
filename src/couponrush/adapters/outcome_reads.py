"""Reading many requests' outcomes at once: when one commit decides thousands of requests, thousands of
waiting clients wake in the same tick and each reads its outcome. Those reads are gathered per event-loop
tick into one statement (up to ``max_batch`` keys each), instead of one query per client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg

from couponrush.domain.model import RejectReason, RequestStatus, RequestView

Key = tuple[int, int]

_LATEST = (
    "SELECT DISTINCT ON (r.user_id, r.coupon_id) r.request_id, r.user_id, r.coupon_id, r.status, r.reason,"
    " r.requested_at, r.decided_at, uc.issued_at"
    " FROM unnest($1::bigint[], $2::bigint[]) AS k(user_id, coupon_id)"
    " JOIN coupon_requests r ON r.user_id = k.user_id AND r.coupon_id = k.coupon_id"
    " LEFT JOIN user_coupons uc"
    "   ON uc.user_id = r.user_id AND uc.coupon_id = r.coupon_id AND uc.request_id = r.request_id"
    " ORDER BY r.user_id, r.coupon_id, r.requested_at DESC"
)


@dataclass
class BatchedRequestStatus:
    """``RequestStatusStore.latest`` with the reads of one tick in one query (the same answer as
    ``PostgresRequestStatus.latest``)."""

    pool: asyncpg.Pool
    max_batch: int = 2000
    _queued: dict[Key, list[asyncio.Future[RequestView | None]]] = field(default_factory=dict)
    _reading: asyncio.Task[None] | None = None

    async def latest(self, user_id: int, coupon_id: int) -> RequestView | None:
        answer: asyncio.Future[RequestView | None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault((user_id, coupon_id), []).append(answer)
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_all())
        return await answer

    async def _read_all(self) -> None:
        await asyncio.sleep(0)  # let the rest of this tick's readers queue up
        while self._queued:
            keys = list(self._queued)[: self.max_batch]
            waiting = {key: self._queued.pop(key) for key in keys}
            try:
                rows = await self.pool.fetch(_LATEST, [k[0] for k in keys], [k[1] for k in keys])
            except Exception as exc:
                for futures in waiting.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            found = {(r["user_id"], r["coupon_id"]): _view(r) for r in rows}
            for key, futures in waiting.items():
                for future in futures:
                    if not future.done():  # its client may have gone
                        future.set_result(found.get(key))


def _view(record: asyncpg.Record) -> RequestView:
    return RequestView(
        request_id=record["request_id"],
        user_id=record["user_id"],
        coupon_id=record["coupon_id"],
        status=RequestStatus(record["status"]),
        reason=None if record["reason"] is None else RejectReason(record["reason"]),
        requested_at=record["requested_at"],
        decided_at=record["decided_at"],
        issued_at=record["issued_at"],
    )
