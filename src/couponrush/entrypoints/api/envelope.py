"""Every HTTP answer, success or error, is ``{"code": <http status>, "message": ..., "data": ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Generic, TypeVar

import orjson
from fastapi.responses import Response
from pydantic import BaseModel

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    code: int
    message: str
    data: T


class ErrorData(BaseModel):
    reason: str
    details: list[dict[str, Any]] | None = None


ErrorEnvelope = Envelope[ErrorData | None]


def ok(data: T, status: int = 200) -> Envelope[T]:
    return Envelope[T](code=status, message=HTTPStatus(status).phrase if status != 200 else "OK", data=data)


def error_body(status: int, message: str, reason: str, details: list[dict[str, Any]] | None = None) -> bytes:
    """The error envelope as bytes (the shape of ``ErrorEnvelope``, built without a model: it is on hot paths)."""
    return orjson.dumps({"code": status, "message": message, "data": {"reason": reason, "details": details}})


def error(
    status: int,
    message: str,
    reason: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = error_body(status, message, reason, details)
    return Response(body, status_code=status, headers=headers or None, media_type="application/json")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give, all in the envelope."""
    return {s: {"model": ErrorEnvelope, "description": HTTPStatus(s).phrase} for s in statuses}
