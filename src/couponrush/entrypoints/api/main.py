"""ASGI factory for uvicorn (also with --workers): settings come from the environment."""

from __future__ import annotations

from fastapi import FastAPI

from couponrush.config import load_settings
from couponrush.entrypoints.api.app import create_app


def create_app_from_env() -> FastAPI:
    return create_app(load_settings())
