"""Interactive docs that work offline, and an OpenAPI document that says what the API really answers.

``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript and CSS from this server: the files ship in the
``fastapi-offline`` wheel (Swagger UI, Apache-2.0; ReDoc, MIT; see its licence file), served under
``/docs/assets``. FastAPI's defaults would fetch them from a CDN, and a machine without internet access
would show a blank page.

FastAPI documents a 422 with its own validation schema on every operation with parameters; this API
answers 400 in its envelope instead (``app.py``), so the document is rewritten to say so.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
_BAD_REQUEST = {
    "description": "Bad Request: an invalid field, named in message and data.details (data.reason INVALID_REQUEST)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
}


_RETRY_AFTER = {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}


def assets_directory() -> str:
    return str(importlib.resources.files("fastapi_offline") / "static")


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /docs/oauth2-redirect and /redoc with packaged assets (create the app with docs_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_directory()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
        app.openapi_schema = real_answers(document)
    return app.openapi_schema


def real_answers(document: dict[str, Any]) -> dict[str, Any]:
    """No 422 and no FastAPI validation schemas: a 400 in the envelope wherever FastAPI promised a 422."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    envelope = next((name for name in schemas if name.startswith("Envelope_Union_ErrorData")), None)
    if envelope is not None:
        schemas["ErrorEnvelope"] = schemas.pop(envelope)
        _rename_refs(document, f"#/components/schemas/{envelope}", "#/components/schemas/ErrorEnvelope")
    for path in document.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = _BAD_REQUEST
            if "503" in responses:
                responses["503"].setdefault(
                    "headers",
                    {
                        "Retry-After": {
                            "description": "seconds to wait before trying again",
                            "schema": {"type": "integer"},
                        }
                    },
                )
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def _rename_refs(node: Any, old: str, new: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and value == old:
                node[key] = new
            else:
                _rename_refs(value, old, new)
    elif isinstance(node, list):
        for item in node:
            _rename_refs(item, old, new)
