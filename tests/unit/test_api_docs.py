"""The API's own documentation: served from the package (no CDN), and it says what the API really answers."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from couponrush.config import Settings
from couponrush.entrypoints.api.app import create_app


def document() -> dict[str, Any]:
    spec: dict[str, Any] = create_app(Settings(admin_token="t")).openapi()
    return spec


def test_no_operation_promises_a_422_and_every_one_with_input_documents_the_400_envelope() -> None:
    spec = document()
    assert '"422"' not in json.dumps(spec)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation.get("parameters") or operation.get("requestBody"):
                bad = operation["responses"]["400"]
                assert "ErrorEnvelope" in json.dumps(bad), (method, path)


def test_refusals_name_their_reasons_and_503_says_when_to_retry() -> None:
    paths = document()["paths"]
    publish = paths["/api/v1/users/{userId}/coupons/publish"]["post"]["responses"]
    assert "NOT_OPEN" in publish["409"]["description"]
    assert "Retry-After" in publish["503"]["headers"]
    patch = paths["/api/v1/coupons/{couponId}"]["patch"]["responses"]
    assert "QUANTITY_BELOW_FLOOR" in patch["409"]["description"]
    assert set(patch) >= {"200", "400", "401", "404", "409", "503"}
    assert "401" in paths["/api/v1/coupons"]["get"]["responses"]
    data = document()["components"]["schemas"]["ErrorData"]["properties"]
    assert {"reason", "details", "opensAt", "floor"} <= set(data)


async def test_docs_pages_load_every_asset_from_this_server() -> None:
    app = create_app(Settings(admin_token="t"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"url: ?'([^']+)'", html)
            assert urls, page
            for url in urls:
                assert url.startswith("/"), f"{page} loads {url} from elsewhere"
                if url != "/openapi.json":
                    assert (await client.get(url)).status_code == 200, url
            assert "cdn" not in html.lower(), page
            assert "googleapis" not in html, page
