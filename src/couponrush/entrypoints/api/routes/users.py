"""What a user does: ask for a coupon, see what they hold."""

from __future__ import annotations

from fastapi import APIRouter

from couponrush.entrypoints.api.deps import AdmissionDep, ServicesDep, UserId
from couponrush.entrypoints.api.envelope import Envelope, error_responses, ok
from couponrush.entrypoints.api.schemas import PublishAccepted, PublishRequest, UserCouponView

router = APIRouter(prefix="/api/v1/users/{userId}/coupons", tags=["users"])


@router.post(
    "/publish",
    summary="Ask for a coupon (first come, first served)",
    description=(
        "Answers at once. 200 means the request was accepted and durably recorded; the coupon is "
        "issued asynchronously and appears in GET /api/v1/users/{userId}/coupons. "
        "409 says why the coupon cannot be had (data.reason: NOT_OPEN, EXPIRED, SOLD_OUT)."
    ),
    responses=error_responses(400, 404, 409, 503),
)
async def request_coupon(user_id: UserId, body: PublishRequest, admission: AdmissionDep) -> Envelope[PublishAccepted]:
    event = await admission.request(user_id, body.coupon_id)
    return ok(
        PublishAccepted(
            request_id=event.request_id,
            user_id=event.user_id,
            coupon_id=event.coupon_id,
            requested_at=event.requested_at,
        )
    )


@router.get("", summary="The coupons a user holds", responses=error_responses(400))
async def held_coupons(user_id: UserId, services: ServicesDep) -> Envelope[list[UserCouponView]]:
    return ok([UserCouponView.of(held) for held in await services.coupons.held_by(user_id)])
