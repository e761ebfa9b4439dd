"""The report's API process: the product's app (routes, fast path, middleware, error envelopes) over the
report's services (see services.py). Only the app's lifespan differs: it opens those services."""

from __future__ import annotations

import signal

from fastapi import FastAPI

from couponrush.config import Settings, load_settings
from couponrush.entrypoints.api.app import create_app
from couponrush.observability.logging import configure_logging
from couponrush_bench.report.services import open_report_services


def create_report_app(settings: Settings) -> FastAPI:
    # No gate restoring at start-up: the flag gate restores a lost flag on the request that finds it gone.
    return create_app(settings, open_report_services, restore_gates=False)


def create_app_from_env() -> FastAPI:
    """ASGI factory for uvicorn (also with several workers): settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level, "api", settings.log_format)
    return create_report_app(settings)


def serve(workers: int) -> None:
    import uvicorn

    settings = load_settings()
    configure_logging(settings.log_level, "api", settings.log_format)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal against the handler installed before it:
    # a no-op handler there makes a graceful stop exit 0 (as `couponrush api` does).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        "couponrush_bench.report.api:create_app_from_env",
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
