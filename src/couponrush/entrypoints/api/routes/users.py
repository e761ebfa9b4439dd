"""What a user does: ask for a coupon, see what they hold."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

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
from couponrush.observability.metrics import WAITING_CLIENTS
from couponrush.service.outcomes import RequestOutcomes

router = APIRouter(
    prefix="/api/v1/users/{userId}/coupons",
    tags=["users"],
    dependencies=[Depends(require_same_user)],
    # Only with COUPONRUSH_USER_TOKEN_SECRET set (docs/OPERATIONS.md, "User identity").
    responses=error_responses(401, 403),
)


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
    responses=error_responses(
        400,
        404,
        409,
        413,
        503,
        r404="UNKNOWN_COUPON",
        r409="SOLD_OUT, ALREADY_REQUESTED, NOT_OPEN (data.opensAt, Retry-After), EXPIRED",
    ),
)
async def request_coupon(request: Request, user_id: UserId, body: PublishRequest, admission: AdmissionDep) -> Response:
    # The same decision and answer as the fast path (publish.py): the model above documents it.
    return (await publish(admission, user_id, body.coupon_id, request.app.state.inflight)).response()


@router.get("", summary="The coupons a user holds", responses=error_responses(400))
async def held_coupons(user_id: UserId, services: ServicesDep) -> Envelope[list[UserCouponView]]:
    return ok([UserCouponView.of(held) for held in await services.coupons.held_by(user_id)])


class _RouteLabel:
    """The route label of waiting requests in the HTTP metrics, apart from the plain reads: a 30 s wait must
    not become the status route's p99."""

    def __init__(self, path: str) -> None:
        self.path = path


_WAITING = _RouteLabel("/api/v1/users/{userId}/coupons/{couponId}/request?wait")
MAX_WAIT_S = 30.0


@router.get(
    "/{couponId}/request",
    summary="Where this user's latest request for a coupon stands: PENDING, ISSUED or REJECTED",
    description=(
        "With ?wait=N (seconds, at most 30) a PENDING request is held until the worker decides it or N "
        "passes (long poll; woken by the decision itself, not by polling), then answered as without it."
    ),
    responses=error_responses(400, 404, r404="NO_REQUEST"),
)
async def request_status(
    request: Request,
    user_id: UserId,
    coupon_id: CouponId,
    services: ServicesDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for a decision")] = 0,
) -> Envelope[RequestStatusView]:
    if wait > 0:
        request.scope["route"] = _WAITING
        outcomes: RequestOutcomes = request.app.state.outcomes
        with WAITING_CLIENTS.labels("long_poll").track_inprogress():
            view = await outcomes.wait(user_id, coupon_id, wait)
    else:
        view = await services.request_status.latest(user_id, coupon_id)
    if view is None:
        raise NoRequest(user_id, coupon_id)
    return ok(RequestStatusView.of(view))


@router.get(
    "/{couponId}/request/events",
    summary="The same as Server-Sent Events: the request's status now, then when it is decided",
    description=(
        "text/event-stream: one `status` event with the same data as GET .../request, again whenever it "
        "changes; the stream ends after the decision (ISSUED or REJECTED). A comment line every "
        "COUPONRUSH_SSE_HEARTBEAT_S (15 s) keeps idle connections open. 404 NO_REQUEST (JSON) when "
        "there is no request."
    ),
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "the stream"},
        **error_responses(400, 404, r404="NO_REQUEST"),
    },
)
async def request_events(request: Request, user_id: UserId, coupon_id: CouponId, services: ServicesDep) -> Response:
    if await services.request_status.latest(user_id, coupon_id) is None:
        raise NoRequest(user_id, coupon_id)
    outcomes: RequestOutcomes = request.app.state.outcomes
    heartbeat = services.settings.sse_heartbeat_s

    async def stream() -> AsyncIterator[bytes]:
        with WAITING_CLIENTS.labels("stream").track_inprogress():
            yield b"retry: 2000\n\n"
            async for view in outcomes.follow(user_id, coupon_id, heartbeat):
                if view is None:
                    yield b": keep-alive\n\n"
                    continue
                data = RequestStatusView.of(view).model_dump_json(by_alias=True)
                yield f"event: status\nid: {view.request_id}:{view.status.value}\ndata: {data}\n\n".encode()

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
