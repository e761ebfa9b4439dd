"""``POST /api/v1/users/{userId}/coupons/publish``: the decision and its answer, in one place.

Both the documented FastAPI route and the fast path (fast_publish.py) call ``publish``; they differ
only in how the request reaches it. The answer is built as bytes once, without a response model:
in a drop this is nearly every request the API serves.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from starlette.responses import Response

from couponrush.domain.model import RejectReason
from couponrush.entrypoints.api.envelope import error_body
from couponrush.observability.metrics import PUBLISH_REQUESTS, TALLY
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


@dataclass
class Inflight:
    """Publish requests being decided in this process; past ``limit`` more are shed with a fast 503.

    Overloaded (offered more than the machine accepts), a queue only grows until clients time out and
    every answer comes too late. A bounded number in flight keeps the answered ones fast; the rest hear
    at once to come back (``Retry-After``). Nothing is accepted before it is decided, so nothing is lost.
    """

    limit: int = 512
    count: int = 0


_OVERLOADED = Answer(
    503,
    error_body(503, "too many requests right now; nothing was accepted, try again", "UNAVAILABLE"),
    (_RETRY_AFTER,),
)


_PUBLISH_COUNTERS: dict[tuple[str, str], Any] = {}


def _counted(outcome: str, reason: str) -> None:
    child = _PUBLISH_COUNTERS.get((outcome, reason))
    if child is None:
        child = _PUBLISH_COUNTERS[(outcome, reason)] = PUBLISH_REQUESTS.labels(outcome, reason)
    TALLY.count(child)


@functools.lru_cache(maxsize=4096)
def _refusal(reason: RejectReason, coupon_id: int) -> Answer:
    status = 404 if reason is RejectReason.UNKNOWN_COUPON else 409
    return Answer(status, error_body(status, _REFUSAL_MESSAGES[reason].format(id=coupon_id), reason.value))


def refused(exc: Refused) -> Answer:
    if exc.opens_at is not None:
        # Scheduled: when it opens (data.opensAt), and a Retry-After of the seconds left by the gate's clock.
        status = 409
        opens_at = _timestamp(exc.opens_at)
        message = f"coupon {exc.coupon_id} opens at {opens_at}"
        body = error_body(status, message, exc.reason.value, opensAt=opens_at)
        wait = max(1, math.ceil(exc.opens_in_s or 0.0))
        return Answer(status, body, ((b"retry-after", str(wait).encode()),))
    # Built once per reason and coupon: after sell-out it is nearly every answer.
    return _refusal(exc.reason, exc.coupon_id)


def unavailable(exc: Unavailable) -> Answer:
    return Answer(503, error_body(503, str(exc), "UNAVAILABLE"), (_RETRY_AFTER,))


async def publish(admission: Admission, user_id: int, coupon_id: int, inflight: Inflight | None = None) -> Answer:
    """Ask admission for one unit; count the outcome; the answer in the envelope."""
    if inflight is not None:
        if inflight.count >= inflight.limit:
            _counted("unavailable", "OVERLOADED")
            return _OVERLOADED
        inflight.count += 1
    try:
        event = await admission.request(user_id, coupon_id)
    except Refused as exc:
        _counted("refused", exc.reason.value)
        return refused(exc)
    except Unavailable as exc:
        _counted("unavailable", "UNAVAILABLE")
        return unavailable(exc)
    except Exception:
        log.exception("unhandled error on POST %s", ROUTE)
        return Answer(500, error_body(500, "internal error", "INTERNAL_ERROR"))
    finally:
        if inflight is not None:
            inflight.count -= 1
    _counted("accepted", "OK")
    data = {
        "requestId": event.request_id,
        "userId": event.user_id,
        "couponId": event.coupon_id,
        "requestedAt": _timestamp(event.requested_at),
    }
    return Answer(200, orjson.dumps({"code": 200, "message": "OK", "data": data}))
