"""Every HTTP answer, success or error, is ``{"code": <http status>, "message": ..., "data": ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Generic, TypeVar

from fastapi.responses import JSONResponse
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


def error(
    status: int,
    message: str,
    reason: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorEnvelope(code=status, message=message, data=ErrorData(reason=reason, details=details))
    return JSONResponse(body.model_dump(mode="json", exclude_none=False), status_code=status, headers=headers or None)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give, all in the envelope."""
    return {s: {"model": ErrorEnvelope, "description": HTTPStatus(s).phrase} for s in statuses}
