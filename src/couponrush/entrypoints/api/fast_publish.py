"""The hot route, ``POST /api/v1/users/{userId}/coupons/publish``, without FastAPI's per-request machinery.

In a drop this one route takes nearly every request, and FastAPI's routing, dependency solving,
validation and response serialization cost more CPU than the admission itself (profiled under load,
see BENCHMARKS.md). This pure-ASGI middleware answers a *plainly valid* request itself, with the same
contract as the FastAPI route (which stays registered, so the OpenAPI schema is unchanged): both call
``publish.publish`` for the decision and the answer. Anything else (another path or
method, a body that is not exactly ``{"couponId": <positive integer>}``, a non-JSON content type)
falls through untouched to FastAPI, which gives the usual 4xx answers; so does every request when user
identity is configured (``COUPONRUSH_USER_TOKEN_SECRET``: the route checks the token).
``COUPONRUSH_HTTP_FAST_PUBLISH=false`` turns it off.
"""

from __future__ import annotations

import re

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from couponrush.entrypoints.api.publish import ROUTE, publish
from couponrush.entrypoints.api.schemas import MAX_ID

_PATH = re.compile(r"/api/v1/users/([1-9][0-9]{0,18})/coupons/publish")
_JSON = b"application/json"


class _RouteLabel:
    """What the observability middleware reads from ``scope["route"]``: the path template."""

    path = ROUTE


_ROUTE = _RouteLabel()


def plain_coupon_id(body: bytes) -> int | None:
    """The coupon id of a body that is exactly ``{"couponId": n}`` with 0 < n <= MAX_ID, else None."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or len(parsed) != 1:
        return None
    value = parsed.get("couponId")
    # bool is an int in Python; the route's strict integer refuses it, so the fast path must too.
    if type(value) is not int or not 0 < value <= MAX_ID:
        return None
    return value


class FastPublishMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(scope["path"])
        # With user identity configured (COUPONRUSH_USER_TOKEN_SECRET), the route's token check applies:
        # such deployments take the FastAPI route for every request.
        if match is None or not _is_json(scope) or scope["app"].state.services.settings.user_token_secret:
            await self.app(scope, receive, send)
            return
        user_id = int(match[1])
        body, complete = await _read_body(receive)
        coupon_id = plain_coupon_id(body) if complete and user_id <= MAX_ID else None
        if coupon_id is None:
            await self.app(scope, _replay(body, receive), send)  # FastAPI answers, as without this path
            return
        scope["route"] = _ROUTE
        state = scope["app"].state
        answer = await publish(state.admission, user_id, coupon_id, state.inflight)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.raw_headers()})
        await send({"type": "http.response.body", "body": answer.body})


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == _JSON)
    return False


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body, and whether it arrived whole (False on a disconnect)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body to the app first, then defers to the server."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
