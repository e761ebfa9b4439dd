"""The live view of a drop (admin): a page served by the API, fed once a second over Server-Sent Events.

A browser's EventSource cannot send an Authorization header, so the page signs in once: it posts the admin
token to ``POST /live/session``, which answers with a session cookie, ``HttpOnly``, ``SameSite=Strict``,
``Path=/live``, ``Secure`` over HTTPS, that holds only an expiry and an HMAC of it keyed by the admin token
(``COUPONRUSH_LIVE_SESSION_S``, 12 h by default). The token itself is never stored in the browser or sent
again; changing the admin token ends every session. ``DELETE /live/session`` signs out.
``/live/events`` and ``/live/snapshot`` take that cookie, or the usual ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.resources
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Cookie, Depends, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import Field
from starlette.exceptions import HTTPException

from couponrush.entrypoints.api.deps import ServicesDep, require_admin
from couponrush.entrypoints.api.envelope import ok
from couponrush.entrypoints.api.schemas import _Body
from couponrush.service.live import LiveView
from couponrush.service.outcomes import RequestOutcomes

router = APIRouter(prefix="/live", include_in_schema=False)
COOKIE = "couponrush_live"
STATIC = importlib.resources.files("couponrush.entrypoints.api") / "static" / "live"


def _key(admin_token: str) -> bytes:
    return hmac.new(admin_token.encode(), b"couponrush live-view session v1", hashlib.sha256).digest()


def session_value(admin_token: str, expires_at: int) -> str:
    mac = hmac.new(_key(admin_token), str(expires_at).encode(), hashlib.sha256).hexdigest()
    return f"{expires_at}.{mac}"


def session_valid(admin_token: str, value: str, now: float) -> bool:
    expires = value.partition(".")[0]
    if not expires.isdigit() or int(expires) <= now:
        return False
    return hmac.compare_digest(value, session_value(admin_token, int(expires)))


async def require_viewer(
    request: Request, services: ServicesDep, session: Annotated[str | None, Cookie(alias=COOKIE)] = None
) -> None:
    """The session cookie, else the admin bearer token (401 in the envelope otherwise)."""
    token = services.settings.admin_token
    if token is not None and session is not None and session_valid(token.get_secret_value(), session, time.time()):
        return
    await require_admin(request, request.headers.get("authorization"))


ViewerDep = Annotated[None, Depends(require_viewer)]


class SignIn(_Body):
    token: str = Field(min_length=1, max_length=1000)


@router.get("", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


@router.get("/assets/{name}")
async def asset(name: str) -> Response:
    types = {"live.js": "text/javascript", "live.css": "text/css"}
    if name not in types:
        raise HTTPException(404, "no such asset")
    return Response((STATIC / name).read_bytes(), media_type=types[name], headers={"Cache-Control": "no-cache"})


@router.get("/session")
async def session(_viewer: ViewerDep) -> Any:
    return ok({"signedIn": True})


@router.post("/session")
async def sign_in(body: SignIn, request: Request, services: ServicesDep) -> Response:
    await require_admin(request, f"Bearer {body.token}")
    token = services.settings.admin_token
    assert token is not None  # require_admin refuses everything without one
    lifetime = services.settings.live_session_s
    response = Response(orjson.dumps({"code": 200, "message": "OK", "data": {"signedIn": True}}), 200)
    response.headers["content-type"] = "application/json"
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        COOKIE,
        session_value(token.get_secret_value(), int(time.time()) + lifetime),
        max_age=lifetime,
        path="/live",
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return response


@router.delete("/session")
async def sign_out() -> Response:
    response = Response(orjson.dumps({"code": 200, "message": "OK", "data": {"signedIn": False}}), 200)
    response.headers["content-type"] = "application/json"
    response.delete_cookie(COOKIE, path="/live", httponly=True, samesite="strict")
    return response


@router.get("/snapshot")
async def snapshot(request: Request, _viewer: ViewerDep) -> Any:
    live: LiveView = request.app.state.live
    async with live.watch() as ticks:
        return ok(await ticks.get())


@router.get("/events")
async def events(request: Request, _viewer: ViewerDep) -> StreamingResponse:
    live: LiveView = request.app.state.live
    outcomes: RequestOutcomes = request.app.state.outcomes

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        async with live.watch() as ticks:
            while not outcomes.waiters.closed:  # closed: the server is stopping
                try:
                    tick = await asyncio.wait_for(ticks.get(), 1.0)
                except TimeoutError:
                    yield b": waiting\n\n"
                    continue
                yield b"event: tick\ndata: " + orjson.dumps(tick) + b"\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
