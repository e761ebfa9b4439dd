"""The live view, as an operator sees it: headless Chromium signs in, a drop runs, and the page's DOM shows the
numbers move, the stock run out and the SOLD_OUT badge; a screenshot is kept as a test artifact
(``COUPONRUSH_LIVE_SCREENSHOT=path`` also writes it there: docs/live-view.png comes from this test)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from couponrush_bench.harness import ADMIN_TOKEN, Sandbox, System, coupon_body
from couponrush_bench.polling import eventually
from tests.support.browser import Page, chromium_or_skip, chromium_page

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def live_system(sandbox: Sandbox) -> AsyncIterator[System]:
    """A system of its own: the page shows every live coupon, and the screenshot should show only this drop's."""
    chromium_or_skip()
    running = await sandbox.start_system("live")
    yield running
    codes = await sandbox.stop_system(running)
    assert set(codes.values()) == {0}, codes


async def card(page: Page, coupon_id: int) -> dict[str, Any] | None:
    """What the page shows for one coupon, read from its DOM (None: no card yet)."""
    value: dict[str, Any] | None = await page.evaluate(
        f"""(() => {{
          const card = document.querySelector('[data-coupon-id="{coupon_id}"]');
          if (!card) return null;
          const text = (name) => card.querySelector(`[data-field="${{name}}"]`).textContent;
          const drawn = card.querySelector('[data-line="accepted"]').getAttribute('points').split(' ')
            .filter((p) => p && parseFloat(p.split(',')[1]) < 117).length;
          return {{state: text('state'), issued: +text('issued'), pending: +text('pending'),
                   available: +text('available'), quantity: +text('quantity'), when: text('when'), drawn}};
        }})()"""
    )
    return value


def issued_at_least(target: int) -> Callable[[dict[str, Any] | None], bool]:
    return lambda shown: shown is not None and shown["issued"] >= target


async def test_the_live_view_shows_a_drop_as_it_happens(live_system: System, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=live_system.base_url, timeout=30) as client:
        refused = await client.get("/live/events")
        assert (refused.status_code, refused.json()["data"]["reason"]) == (401, "UNAUTHORIZED")
        soon = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        scheduled = await client.post(
            "/api/v1/coupons", json={**coupon_body(500, name="evening drop"), "opensAt": soon}, headers=ADMIN
        )
        created = await client.post("/api/v1/coupons", json=coupon_body(60, name="10:00 flash sale"), headers=ADMIN)
        coupon_id = created.json()["data"]["id"]

        async with chromium_page() as page:
            await page.goto(f"{live_system.base_url}/live")
            assert await page.evaluate("!document.getElementById('signin').hidden")  # not signed in yet
            await page.evaluate(
                "document.getElementById('token').value = 'wrong'; document.getElementById('signin').requestSubmit()"
            )
            await eventually(
                lambda: page.evaluate("document.getElementById('signin-error').textContent"),
                lambda text: "not the admin token" in text,
                timeout=10,
                what="the page refusing a wrong token",
            )
            await page.evaluate(
                f"document.getElementById('token').value = '{ADMIN_TOKEN}';"
                " document.getElementById('signin').requestSubmit()"
            )
            shown = await eventually(
                lambda: card(page, coupon_id), lambda c: c is not None, timeout=20, what="the drop's card"
            )
            assert shown is not None
            assert (shown["state"], shown["issued"], shown["available"], shown["quantity"]) == ("OPEN", 0, 60, 60)
            other = await card(page, scheduled.json()["data"]["id"])
            assert other is not None
            assert other["state"] == "SCHEDULED"
            assert other["when"].startswith("opens in")

            # The drop, in waves: each waits until the page shows the one before (the numbers move).
            user = 0
            for wave in (20, 20, 40):
                answers = await asyncio.gather(
                    *(
                        client.post(f"/api/v1/users/{user + i}/coupons/publish", json={"couponId": coupon_id})
                        for i in range(1, wave + 1)
                    )
                )
                user += wave
                accepted = sum(a.status_code == 200 for a in answers)
                assert accepted > 0
                target = min(60, user)
                shown = await eventually(
                    lambda: card(page, coupon_id), issued_at_least(target), timeout=30, what=f"{target} issued shown"
                )
            assert shown is not None
            assert (shown["state"], shown["issued"], shown["pending"], shown["available"]) == ("SOLD_OUT", 60, 0, 0)
            assert shown["drawn"] > 0  # the accepted/s chart has points above its baseline
            p99 = await page.evaluate("document.getElementById('p99').textContent")
            assert p99.endswith(" ms"), p99
            assert await page.evaluate("document.getElementById('conn').textContent") == "live"

            screenshot = tmp_path / "live-view.png"
            await page.screenshot(screenshot)
    assert screenshot.stat().st_size > 10_000
    if target_path := os.environ.get("COUPONRUSH_LIVE_SCREENSHOT"):
        shutil.copyfile(screenshot, target_path)


async def test_the_interactive_docs_render_offline(system: System) -> None:
    """Swagger UI and ReDoc draw the API's operations with nothing but this server (Chromium runs offline)."""
    async with chromium_page() as page:
        await page.goto(f"{system.base_url}/docs")
        operations = await eventually(
            lambda: page.evaluate("document.querySelectorAll('.opblock').length"),
            lambda n: n >= 10,
            timeout=30,
            what="Swagger UI listing the operations",
        )
        assert operations >= 10
        await page.goto(f"{system.base_url}/redoc")
        await eventually(
            lambda: page.evaluate("document.body.innerText.includes('Ask for a coupon')"),
            bool,
            timeout=30,
            what="ReDoc showing the publish operation",
        )
