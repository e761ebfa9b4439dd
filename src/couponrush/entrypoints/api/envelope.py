"""Every HTTP answer, success or error, is ``{"code": <http status>, "message": ..., "data": ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, Field

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    code: int
    message: str
    data: T


class ErrorData(BaseModel):
    """Why: ``reason`` is a stable word; some refusals say more in further fields."""

    reason: str
    details: list[dict[str, Any]] | None = None
    opensAt: str | None = Field(default=None, description="NOT_OPEN of a scheduled coupon: when it opens")
    floor: int | None = Field(default=None, description="QUANTITY_BELOW_FLOOR: the lowest quantity allowed now")
    issuedCount: int | None = Field(default=None, description="QUANTITY_BELOW_FLOOR: units issued")
    pendingCount: int | None = Field(default=None, description="QUANTITY_BELOW_FLOOR: requests pending")


ErrorEnvelope = Envelope[ErrorData | None]


def ok(data: T, status: int = 200) -> Envelope[T]:
    return Envelope[T](code=status, message=HTTPStatus(status).phrase if status != 200 else "OK", data=data)


def as_json(envelope: Envelope[Any], status: int = 200) -> Response:
    """An envelope as a response, for routes that answer either JSON or a stream (camelCase on the wire)."""
    body = orjson.dumps(envelope.model_dump(mode="json", by_alias=True))
    return Response(body, status_code=status, media_type="application/json")


def error_body(
    status: int, message: str, reason: str, details: list[dict[str, Any]] | None = None, **extra: Any
) -> bytes:
    """The error envelope as bytes (the shape of ``ErrorEnvelope``, built without a model: it is on hot paths).
    ``extra`` are further fields of ``data`` that some refusals carry (``opensAt``, ``floor``...)."""
    return orjson.dumps({"code": status, "message": message, "data": {"reason": reason, "details": details, **extra}})


def error(
    status: int,
    message: str,
    reason: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = error_body(status, message, reason, details, **extra)
    return Response(body, status_code=status, headers=headers or None, media_type="application/json")


_REASONS = {
    400: "INVALID_REQUEST: the field is named in message and data.details",
    401: "UNAUTHORIZED: no or a wrong token (Authorization: Bearer ...)",
    403: "FORBIDDEN: another user's token (only with COUPONRUSH_USER_TOKEN_SECRET set)",
    413: "PAYLOAD_TOO_LARGE",
    503: "UNAVAILABLE: nothing was done; try again after Retry-After seconds",
}


def error_responses(*statuses: int, **reasons: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give, all in the envelope; ``reasons`` say which
    words ``data.reason`` takes (keyword ``r409="SOLD_OUT, ..."``)."""
    entries: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        said = reasons.get(f"r{s}") or _REASONS.get(s)
        entries[s] = {"model": ErrorEnvelope, "description": HTTPStatus(s).phrase + (f": {said}" if said else "")}
    return entries
