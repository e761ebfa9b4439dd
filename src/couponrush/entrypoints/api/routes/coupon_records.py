"""Who holds a coupon, every request for it, every change of it (admin): for customer support and audits.

JSON pages with a cursor, or ``?format=csv``: the whole listing (from ``cursor`` on, if given) streamed
as CSV, read from the database page by page, so a million holders never sit in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Security
from fastapi.responses import Response, StreamingResponse

from couponrush.domain.model import RejectReason, RequestStatus
from couponrush.entrypoints.api.admin_schemas import (
    BadCursor,
    ChangePage,
    ChangeView,
    HolderPage,
    HolderView,
    RequestPage,
    RequestRowView,
    decode_cursor,
    encode_cursor,
)
from couponrush.entrypoints.api.deps import AdminDep, BadInput, CouponId, ServicesDep
from couponrush.entrypoints.api.envelope import Envelope, as_json, error_responses, ok
from couponrush.entrypoints.api.routes.coupons import bearer
from couponrush.service.admission import Refused
from couponrush.service.ports import Holder, RequestRow

router = APIRouter(prefix="/api/v1/coupons/{couponId}", tags=["coupons"], dependencies=[Security(bearer)])

Row = TypeVar("Row")
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(max_length=400)]
Format = Annotated[Literal["json", "csv"], Query(description="csv: the whole listing as a CSV stream")]
CSV_PAGE = 1000
_CSV_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "a page (JSON), or CSV"},
    **error_responses(400, 401, 404, r404="UNKNOWN_COUPON"),
}


async def _known(services: ServicesDep, coupon_id: int) -> None:
    if await services.coupons.get(coupon_id) is None:
        raise Refused(coupon_id, RejectReason.UNKNOWN_COUPON)


def _key(kind: str, cursor: str | None, *types: type) -> tuple[Any, ...] | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(kind, cursor, *types)
    except BadCursor as exc:
        raise BadInput(("query", "cursor"), str(exc)) from exc


def _cell(value: object) -> object:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else value


def _csv_stream(
    header: Sequence[str],
    fetch: Callable[[Any, int], Awaitable[list[Row]]],
    key_of: Callable[[Row], Any],
    cells: Callable[[Row], Sequence[object]],
    start: Any,
    filename: str,
) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        after = start
        while True:
            rows = await fetch(after, CSV_PAGE)
            for row in rows:
                writer.writerow(
                    ["" if c is None else c.isoformat() if isinstance(c, datetime) else c for c in cells(row)]
                )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(rows) < CSV_PAGE:
                return
            after = key_of(rows[-1])

    disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers=disposition)


@router.get(
    "/holders",
    summary="Who holds this coupon, in issue order (admin)",
    response_model=Envelope[HolderPage],
    responses=_CSV_OR_JSON,
)
async def holders(
    coupon_id: CouponId,
    services: ServicesDep,
    _admin: AdminDep,
    limit: Limit = 100,
    cursor: Cursor = None,
    format: Format = "json",
) -> Response:
    start = _key("holders", cursor, datetime, int)
    await _known(services, coupon_id)

    async def fetch(after: Any, n: int) -> list[Holder]:
        return await services.listings.holders(coupon_id, after, n)

    if format == "csv":
        return _csv_stream(
            ("userId", "requestId", "issuedAt"),
            fetch,
            lambda h: (h.issued_at, h.row_id),
            lambda h: (h.user_id, h.request_id, h.issued_at),
            start,
            f"coupon-{coupon_id}-holders.csv",
        )
    found = await fetch(start, limit + 1)
    page = found[:limit]
    nxt = encode_cursor("holders", page[-1].issued_at, page[-1].row_id) if len(found) > limit else None
    return as_json(ok(HolderPage(items=[HolderView.of(h) for h in page], next_cursor=nxt)))


@router.get(
    "/requests",
    summary="Every accepted request for this coupon, in arrival order (admin)",
    description="?status= (repeatable) keeps only PENDING, ISSUED or REJECTED ones.",
    response_model=Envelope[RequestPage],
    responses=_CSV_OR_JSON,
)
async def requests(
    coupon_id: CouponId,
    services: ServicesDep,
    _admin: AdminDep,
    status: Annotated[list[RequestStatus] | None, Query()] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    format: Format = "json",
) -> Response:
    start = _key("requests", cursor, datetime, str)
    await _known(services, coupon_id)

    async def fetch(after: Any, n: int) -> list[RequestRow]:
        return await services.listings.requests(coupon_id, after, n, status or [])

    if format == "csv":
        return _csv_stream(
            ("requestId", "userId", "status", "reason", "requestedAt", "decidedAt", "redrives", "deadLetteredAt"),
            fetch,
            lambda r: (r.requested_at, r.request_id),
            lambda r: (
                r.request_id,
                r.user_id,
                r.status.value,
                None if r.reason is None else r.reason.value,
                r.requested_at,
                r.decided_at,
                r.redrives,
                r.dead_lettered_at,
            ),
            start,
            f"coupon-{coupon_id}-requests.csv",
        )
    found = await fetch(start, limit + 1)
    page = found[:limit]
    nxt = encode_cursor("requests", page[-1].requested_at, page[-1].request_id) if len(found) > limit else None
    return as_json(ok(RequestPage(items=[RequestRowView.of(r) for r in page], next_cursor=nxt)))


@router.get(
    "/changes",
    summary="Every change of this coupon by an operator, oldest first (admin): who, when, before, after",
    response_model=Envelope[ChangePage],
    responses=error_responses(400, 401, 404, r404="UNKNOWN_COUPON"),
)
async def changes(
    coupon_id: CouponId, services: ServicesDep, _admin: AdminDep, limit: Limit = 100, cursor: Cursor = None
) -> Response:
    start = _key("changes", cursor, int)
    await _known(services, coupon_id)
    found = await services.listings.changes(coupon_id, None if start is None else start[0], limit + 1)
    page = found[:limit]
    nxt = encode_cursor("changes", page[-1].id) if len(found) > limit else None
    return as_json(ok(ChangePage(items=[ChangeView.of(c) for c in page], next_cursor=nxt)))
