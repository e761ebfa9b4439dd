"""How background loops report a failure they will retry: one line, the traceback only at DEBUG.

An outage (PostgreSQL restarting, Redis away) makes such loops fail every pass; a traceback each
time buries the one line that says what is wrong.
"""

from __future__ import annotations

import logging


def failed(log: logging.Logger, exc: BaseException, message: str, *args: object) -> None:
    """``message % args``, then the error on the same line; the traceback too when DEBUG is on."""
    debug = log.isEnabledFor(logging.DEBUG)
    log.warning(message + ": %s", *args, _short(exc), exc_info=exc if debug else None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
