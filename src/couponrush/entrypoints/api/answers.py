"""The answers to a refused or unavailable admission, shared by the publish route and its fast path."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from couponrush.domain.model import RejectReason
from couponrush.entrypoints.api import envelope
from couponrush.service.admission import Refused, Unavailable

_REFUSAL_MESSAGES = {
    RejectReason.UNKNOWN_COUPON: "coupon {id} does not exist",
    RejectReason.NOT_OPEN: "coupon {id} is not open for issuing",
    RejectReason.EXPIRED: "coupon {id} has expired",
    RejectReason.SOLD_OUT: "coupon {id} is sold out",
    RejectReason.ALREADY_REQUESTED: "this user already holds coupon {id} or has a request for it pending",
    RejectReason.ALREADY_ISSUED: "coupon {id} was already issued to this user",
}


def refused(exc: Refused) -> JSONResponse:
    status = 404 if exc.reason is RejectReason.UNKNOWN_COUPON else 409
    return envelope.error(status, _REFUSAL_MESSAGES[exc.reason].format(id=exc.coupon_id), exc.reason.value)


def unavailable(exc: Unavailable) -> JSONResponse:
    return envelope.error(503, str(exc), "UNAVAILABLE", headers={"Retry-After": "1"})
