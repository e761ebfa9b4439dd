"""Coupons: created, listed, changed, opened and closed by administrators; readable by anyone."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Security
from fastapi.security import HTTPBearer

from couponrush.domain.model import CouponState, CouponStatus, NewCoupon, RejectReason
from couponrush.entrypoints.api.admin_schemas import BadCursor, CouponPage, CouponPatch, decode_cursor, encode_cursor
from couponrush.entrypoints.api.deps import ActorDep, AdminDep, BadInput, CouponId, ServicesDep
from couponrush.entrypoints.api.envelope import Envelope, error_responses, ok
from couponrush.entrypoints.api.schemas import CouponCreate, CouponView
from couponrush.service.admission import Refused
from couponrush.service.clock import utcnow

router = APIRouter(prefix="/api/v1/coupons", tags=["coupons"])
# Only documents the scheme in OpenAPI; the check itself is require_admin (envelope-shaped 401s).
bearer = HTTPBearer(auto_error=False, description="COUPONRUSH_ADMIN_TOKEN")


async def view(services: ServicesDep, coupon_id: int) -> CouponView:
    """The coupon with its derived state and counts (404 in the envelope when unknown)."""
    summary = await services.listings.summary(coupon_id, utcnow())
    if summary is None:
        raise Refused(coupon_id, RejectReason.UNKNOWN_COUPON)
    return CouponView.of(summary)


@router.post(
    "",
    status_code=201,
    summary="Create a coupon (admin)",
    description="With opensAt, publish answers 409 NOT_OPEN (data.opensAt, Retry-After) until that instant, "
    "judged by the gate's (Redis server's) clock. expiredAt must be in the future and after opensAt (400).",
    responses=error_responses(400, 401, 413),
    dependencies=[Security(bearer)],
)
async def create_coupon(
    body: CouponCreate, services: ServicesDep, _admin: AdminDep, actor: ActorDep
) -> Envelope[CouponView]:
    coupon = await services.coupon_admin().create(
        NewCoupon(
            name=body.name,
            discount_rate=body.discount_rate,
            quantity=body.quantity,
            status=body.status,
            expired_at=body.expired_at,
            opens_at=body.opens_at,
        ),
        actor=actor,
    )
    return ok(await view(services, coupon.id), status=201)


@router.get(
    "",
    summary="List coupons, newest first (admin)",
    description="Paginated: pass data.nextCursor as ?cursor= for the next page. ?state= (repeatable) keeps "
    "only coupons in those states.",
    responses=error_responses(400, 401),
    dependencies=[Security(bearer)],
)
async def list_coupons(
    services: ServicesDep,
    _admin: AdminDep,
    state: Annotated[list[CouponState] | None, Query(description="SCHEDULED, OPEN, SOLD_OUT, CLOSED, EXPIRED")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Envelope[CouponPage]:
    before: int | None = None
    if cursor is not None:
        try:
            (before,) = decode_cursor("coupons", cursor, int)
        except BadCursor as exc:
            raise BadInput(("query", "cursor"), str(exc)) from exc
    found = await services.listings.summaries(state or [], before, limit + 1, utcnow())
    page = found[:limit]
    next_cursor = encode_cursor("coupons", page[-1].coupon.id) if len(found) > limit else None
    return ok(CouponPage(items=[CouponView.of(s) for s in page], next_cursor=next_cursor))


@router.get("/{couponId}", summary="Read a coupon", responses=error_responses(400, 404, r404="UNKNOWN_COUPON"))
async def get_coupon(coupon_id: CouponId, services: ServicesDep) -> Envelope[CouponView]:
    return ok(await view(services, coupon_id))


@router.patch(
    "/{couponId}",
    summary="Change a coupon during a drop (admin): quantity, name, expiredAt, opensAt",
    description=(
        "The gate follows atomically: raising the quantity admits more at once; lowering it never goes "
        "below the units issued or reserved (409 QUANTITY_BELOW_FLOOR with data.floor); an expired coupon "
        "can only be renamed (409 EXPIRED). 503 (Retry-After) while the coupon's gate is being rebuilt. "
        "Recorded in GET /api/v1/coupons/{couponId}/changes."
    ),
    responses=error_responses(
        400, 401, 404, 409, 413, 503, r404="UNKNOWN_COUPON", r409="QUANTITY_BELOW_FLOOR (data.floor), EXPIRED"
    ),
    dependencies=[Security(bearer)],
)
async def change_coupon(
    coupon_id: CouponId, body: CouponPatch, services: ServicesDep, _admin: AdminDep, actor: ActorDep
) -> Envelope[CouponView]:
    coupon = await services.coupon_admin().update(coupon_id, body.edit(), actor=actor)
    if coupon is None:
        raise Refused(coupon_id, RejectReason.UNKNOWN_COUPON)
    return ok(await view(services, coupon_id))


async def _set_status(services: ServicesDep, coupon_id: int, status: CouponStatus, actor: str) -> Envelope[CouponView]:
    coupon = await services.coupon_admin().set_status(coupon_id, status, actor=actor)
    if coupon is None:
        raise Refused(coupon_id, RejectReason.UNKNOWN_COUPON)
    return ok(await view(services, coupon_id))


@router.post(
    "/{couponId}/close",
    summary="Close a coupon (admin): status UNPUBLISHABLE, the gate refuses at once",
    responses=error_responses(400, 401, 404, r404="UNKNOWN_COUPON"),
    dependencies=[Security(bearer)],
)
async def close_coupon(
    coupon_id: CouponId, services: ServicesDep, _admin: AdminDep, actor: ActorDep
) -> Envelope[CouponView]:
    return await _set_status(services, coupon_id, CouponStatus.UNPUBLISHABLE, actor)


@router.post(
    "/{couponId}/open",
    summary="Reopen a coupon (admin): status PUBLISHABLE, the gate admits again",
    description="An expired coupon cannot be opened: 409 EXPIRED.",
    responses=error_responses(400, 401, 404, 409, r404="UNKNOWN_COUPON", r409="EXPIRED"),
    dependencies=[Security(bearer)],
)
async def open_coupon(
    coupon_id: CouponId, services: ServicesDep, _admin: AdminDep, actor: ActorDep
) -> Envelope[CouponView]:
    return await _set_status(services, coupon_id, CouponStatus.PUBLISHABLE, actor)
