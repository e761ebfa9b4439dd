"""Coupons: created by administrators, readable by anyone."""

from __future__ import annotations

from fastapi import APIRouter, Security
from fastapi.security import HTTPBearer

from couponrush.domain.model import CouponStatus, NewCoupon, RejectReason
from couponrush.entrypoints.api.deps import AdminDep, CouponId, ServicesDep
from couponrush.entrypoints.api.envelope import Envelope, error_responses, ok
from couponrush.entrypoints.api.schemas import CouponCreate, CouponView
from couponrush.service.admission import Refused

router = APIRouter(prefix="/api/v1/coupons", tags=["coupons"])
# Only documents the scheme in OpenAPI; the check itself is require_admin (envelope-shaped 401s).
_bearer = HTTPBearer(auto_error=False, description="COUPONRUSH_ADMIN_TOKEN")


@router.post(
    "",
    status_code=201,
    summary="Create a coupon (admin)",
    responses=error_responses(400, 401),
    dependencies=[Security(_bearer)],
)
async def create_coupon(body: CouponCreate, services: ServicesDep, _admin: AdminDep) -> Envelope[CouponView]:
    coupon = await services.coupon_admin().create(
        NewCoupon(
            name=body.name,
            discount_rate=body.discount_rate,
            quantity=body.quantity,
            status=body.status,
            expired_at=body.expired_at,
        )
    )
    return ok(CouponView.of(coupon), status=201)


@router.get("/{couponId}", summary="Read a coupon", responses=error_responses(400, 404))
async def get_coupon(coupon_id: CouponId, services: ServicesDep) -> Envelope[CouponView]:
    coupon = await services.coupons.get(coupon_id)
    if coupon is None:
        raise Refused(coupon_id, RejectReason.UNKNOWN_COUPON)
    return ok(CouponView.of(coupon))


async def _set_status(services: ServicesDep, coupon_id: int, status: CouponStatus) -> Envelope[CouponView]:
    coupon = await services.coupon_admin().set_status(coupon_id, status)
    if coupon is None:
        raise Refused(coupon_id, RejectReason.UNKNOWN_COUPON)
    return ok(CouponView.of(coupon))


@router.post(
    "/{couponId}/close",
    summary="Close a coupon (admin): status UNPUBLISHABLE, the gate refuses at once",
    responses=error_responses(400, 401, 404),
    dependencies=[Security(_bearer)],
)
async def close_coupon(coupon_id: CouponId, services: ServicesDep, _admin: AdminDep) -> Envelope[CouponView]:
    return await _set_status(services, coupon_id, CouponStatus.UNPUBLISHABLE)


@router.post(
    "/{couponId}/open",
    summary="Reopen a coupon (admin): status PUBLISHABLE, the gate admits again",
    responses=error_responses(400, 401, 404),
    dependencies=[Security(_bearer)],
)
async def open_coupon(coupon_id: CouponId, services: ServicesDep, _admin: AdminDep) -> Envelope[CouponView]:
    return await _set_status(services, coupon_id, CouponStatus.PUBLISHABLE)
