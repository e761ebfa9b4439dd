"""The request id of the work in hand, carried in a context variable so every log line can show it.

The API sets it per HTTP request (and admission uses it as the coupon request id, so the id a client
gets back is the one in the outbox row, the Kafka ``request-id`` header and the worker's log lines);
the worker sets it per record it issues.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("couponrush_request_id", default=None)


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def new_request_id() -> str:
    """A fresh server-made id (never taken from a client: it becomes a primary key)."""
    return uuid.uuid4().hex


def request_id_or_new() -> str:
    """The request id of the HTTP request being served, or a fresh one outside of one."""
    return REQUEST_ID.get() or new_request_id()


@contextlib.contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)
