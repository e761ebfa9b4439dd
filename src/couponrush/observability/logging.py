"""Logging for every role: JSON lines when stdout is not a terminal, readable text when it is.

Each line carries the role, and the request id (and trace/span ids when tracing is on) of the work
it belongs to, so one request can be followed from the API through the outbox and Kafka into the worker.
``COUPONRUSH_LOG_FORMAT`` forces ``json`` or ``text``.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from couponrush.observability import tracing
from couponrush.observability.context import current_request_id

LogFormat = Literal["auto", "json", "text"]

# Attributes every LogRecord has; anything else was passed with extra={...} and is emitted as a field.
# (uvicorn's color_message repeats msg with terminal colours.)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class ContextFilter(logging.Filter):
    """Stamps the role, the current request id and trace ids onto every record."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        ids = tracing.current_ids()
        record.trace_id, record.span_id = ids if ids is not None else (None, None)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "role": getattr(record, "role", None),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in ("request_id", "trace_id", "span_id"):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in line and name not in ("role", "request_id", "trace_id", "span_id"):
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(role)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [request_id={request_id}]" if request_id else text


def use_json(fmt: LogFormat, stream: Any = None) -> bool:
    if fmt != "auto":
        return fmt == "json"
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def configure_logging(level: str, role: str, fmt: LogFormat = "auto", *, stream: Any = None) -> None:
    """(Re)configure the root logger for ``role``; safe to call again (e.g. in each API worker process).

    Long-running roles log to stdout; one-shot operator commands pass ``stream=sys.stderr`` so their
    own output on stdout stays clean.
    """
    stream = stream if stream is not None else sys.stdout
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter(role))
    handler.setFormatter(JsonFormatter() if use_json(fmt, stream) else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("asyncio", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
