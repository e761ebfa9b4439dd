"""ASGI factory for uvicorn (also with --workers): settings come from the environment."""

from __future__ import annotations

from fastapi import FastAPI

from couponrush.config import load_settings
from couponrush.entrypoints.api.app import create_app
from couponrush.observability.logging import configure_logging
from couponrush.observability.tracing import configure_tracing


def create_app_from_env() -> FastAPI:
    settings = load_settings()
    # Runs in every API worker process (uvicorn spawns them): each sets up its own logs and tracer.
    configure_logging(settings.log_level, "api", settings.log_format)
    configure_tracing("api")
    return create_app(settings)
