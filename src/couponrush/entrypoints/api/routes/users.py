"""What a user does: ask for a coupon, see what they hold."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from couponrush.entrypoints.api.deps import (
    AdmissionDep,
    CouponId,
    NoRequest,
    ServicesDep,
    UserId,
    require_same_user,
)
from couponrush.entrypoints.api.envelope import Envelope, error_responses, ok
from couponrush.entrypoints.api.publish import publish
from couponrush.entrypoints.api.schemas import PublishAccepted, PublishRequest, RequestStatusView, UserCouponView

router = APIRouter(prefix="/api/v1/users/{userId}/coupons", tags=["users"], dependencies=[Depends(require_same_user)])


@router.post(
    "/publish",
    summary="Ask for a coupon (first come, first served)",
    description=(
        "Answers at once. 200 means the request was accepted and durably recorded; the coupon is "
        "issued asynchronously and appears in GET /api/v1/users/{userId}/coupons. "
        "409 says why not (data.reason: SOLD_OUT, ALREADY_REQUESTED, NOT_OPEN, EXPIRED). With the default "
        "reserving gate, 200 means a coupon is reserved for this request: it will be issued. "
        "GET .../coupons/{couponId}/request follows it."
    ),
    response_model=Envelope[PublishAccepted],
    responses=error_responses(400, 404, 409, 503),
)
async def request_coupon(request: Request, user_id: UserId, body: PublishRequest, admission: AdmissionDep) -> Response:
    # The same decision and answer as the fast path (publish.py): the model above documents it.
    return (await publish(admission, user_id, body.coupon_id, request.app.state.inflight)).response()


@router.get("", summary="The coupons a user holds", responses=error_responses(400))
async def held_coupons(user_id: UserId, services: ServicesDep) -> Envelope[list[UserCouponView]]:
    return ok([UserCouponView.of(held) for held in await services.coupons.held_by(user_id)])


@router.get(
    "/{couponId}/request",
    summary="Where this user's latest request for a coupon stands: PENDING, ISSUED or REJECTED",
    responses=error_responses(400, 404),
)
async def request_status(user_id: UserId, coupon_id: CouponId, services: ServicesDep) -> Envelope[RequestStatusView]:
    view = await services.request_status.latest(user_id, coupon_id)
    if view is None:
        raise NoRequest(user_id, coupon_id)
    return ok(RequestStatusView.of(view))
