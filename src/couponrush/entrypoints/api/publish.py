"""``POST /api/v1/users/{userId}/coupons/publish``: the decision and its answer, in one place.

Both the documented FastAPI route and the fast path (fast_publish.py) call ``publish``; they differ
only in how the request reaches it. The answer is built as bytes once, without a response model:
in a drop this is nearly every request the API serves.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime

import orjson
from starlette.responses import Response

from couponrush.domain.model import RejectReason
from couponrush.entrypoints.api.envelope import error_body
from couponrush.observability.metrics import PUBLISH_REQUESTS
from couponrush.service.admission import Admission, Refused, Unavailable

log = logging.getLogger(__name__)

ROUTE = "/api/v1/users/{userId}/coupons/publish"
_JSON = (b"content-type", b"application/json")
_RETRY_AFTER = (b"retry-after", b"1")
_REFUSAL_MESSAGES = {
    RejectReason.UNKNOWN_COUPON: "coupon {id} does not exist",
    RejectReason.NOT_OPEN: "coupon {id} is not open for issuing",
    RejectReason.EXPIRED: "coupon {id} has expired",
    RejectReason.SOLD_OUT: "coupon {id} is sold out",
    RejectReason.ALREADY_REQUESTED: "this user already holds coupon {id} or has a request for it pending",
    RejectReason.ALREADY_ISSUED: "coupon {id} was already issued to this user",
    RejectReason.NOT_RECORDED: "the request for coupon {id} was not recorded",
}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    # Besides content-type and content-length.
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return [_JSON, (b"content-length", str(len(self.body)).encode()), *self.headers]

    def response(self) -> Response:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
        return Response(self.body, status_code=self.status, headers=headers, media_type="application/json")


def _timestamp(moment: datetime) -> str:
    """The same text pydantic writes for an aware UTC datetime (``...Z``), as every other answer has."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def refused(exc: Refused) -> Answer:
    status = 404 if exc.reason is RejectReason.UNKNOWN_COUPON else 409
    message = _REFUSAL_MESSAGES[exc.reason].format(id=exc.coupon_id)
    if exc.opens_at is not None:
        # Scheduled: when it opens (data.opensAt), and a Retry-After of the seconds left by the gate's clock.
        opens_at = _timestamp(exc.opens_at)
        message = f"coupon {exc.coupon_id} opens at {opens_at}"
        body = error_body(status, message, exc.reason.value, opensAt=opens_at)
        wait = max(1, math.ceil(exc.opens_in_s or 0.0))
        return Answer(status, body, ((b"retry-after", str(wait).encode()),))
    return Answer(status, error_body(status, message, exc.reason.value))


def unavailable(exc: Unavailable) -> Answer:
    return Answer(503, error_body(503, str(exc), "UNAVAILABLE"), (_RETRY_AFTER,))


async def publish(admission: Admission, user_id: int, coupon_id: int) -> Answer:
    """Ask admission for one unit; count the outcome; the answer in the envelope."""
    try:
        event = await admission.request(user_id, coupon_id)
    except Refused as exc:
        PUBLISH_REQUESTS.labels("refused", exc.reason.value).inc()
        return refused(exc)
    except Unavailable as exc:
        PUBLISH_REQUESTS.labels("unavailable", "UNAVAILABLE").inc()
        return unavailable(exc)
    except Exception:
        log.exception("unhandled error on POST %s", ROUTE)
        return Answer(500, error_body(500, "internal error", "INTERNAL_ERROR"))
    PUBLISH_REQUESTS.labels("accepted", "OK").inc()
    data = {
        "requestId": event.request_id,
        "userId": event.user_id,
        "couponId": event.coupon_id,
        "requestedAt": _timestamp(event.requested_at),
    }
    return Answer(200, orjson.dumps({"code": 200, "message": "OK", "data": data}))
