"""Admin routes refuse strangers; with an identity configured, users read and act only as themselves;
no secret (admin token, user-token secret, database password) ever reaches a log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from couponrush.service.identity import user_token
from couponrush_bench.harness import ADMIN_TOKEN, Sandbox, System

USER_SECRET = "user-token-secret-e2e-7f3a"
DB_PASSWORD = "db-password-e2e-91c2"  # the test cluster trusts local connections: any password works


def with_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{DB_PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="module")
async def guarded(sandbox: Sandbox) -> AsyncIterator[System]:
    db_url = with_password(sandbox.database_url("security"))
    running = await sandbox.start_system(
        "security",
        extra_env={"COUPONRUSH_USER_TOKEN_SECRET": USER_SECRET, "COUPONRUSH_DATABASE_URL": db_url},
    )
    yield running
    codes = await sandbox.stop_system(running)
    assert set(codes.values()) == {0}, codes


def assert_envelope(response: httpx.Response, status: int, reason: str) -> None:
    body = response.json()
    assert response.status_code == status, body
    assert body["code"] == status
    assert body["data"]["reason"] == reason
    assert body["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        f"Basic {ADMIN_TOKEN}",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {USER_SECRET}",
    ],
)
async def test_admin_routes_refuse_without_or_with_a_wrong_token(guarded: System, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=guarded.base_url, headers=headers) as client:
        body = {
            "name": "x",
            "discountRate": 0.1,
            "quantity": 1,
            "status": "PUBLISHABLE",
            "expiredAt": "2099-01-01T00:00:00Z",
        }
        assert_envelope(await client.post("/api/v1/coupons", json=body), 401, "UNAUTHORIZED")
        assert_envelope(await client.post("/api/v1/coupons/1/close"), 401, "UNAUTHORIZED")
        assert_envelope(await client.post("/api/v1/coupons/1/open"), 401, "UNAUTHORIZED")
    conn = await guarded.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM coupons WHERE name = 'x'") == 0
    finally:
        await conn.close()


async def test_with_an_identity_configured_a_user_reads_and_acts_only_as_themselves(guarded: System) -> None:
    own, other = user_token(USER_SECRET, 7), user_token(USER_SECRET, 8)
    expired = user_token(USER_SECRET, 7, ttl_s=-1)
    forged = user_token("not-the-secret", 7)
    tampered = own.replace(".7.", ".8.", 1)
    async with httpx.AsyncClient(base_url=guarded.base_url) as client:
        for path in ("/api/v1/users/7/coupons", "/api/v1/users/7/coupons/1/request"):
            assert_envelope(await client.get(path), 401, "UNAUTHORIZED")
            for bad in (expired, forged, tampered, "garbage", ADMIN_TOKEN):
                assert_envelope(await client.get(path, headers={"Authorization": f"Bearer {bad}"}), 401, "UNAUTHORIZED")
            assert_envelope(await client.get(path, headers={"Authorization": f"Bearer {other}"}), 403, "FORBIDDEN")
        mine = await client.get("/api/v1/users/7/coupons", headers={"Authorization": f"Bearer {own}"})
        assert mine.status_code == 200
        assert mine.json()["data"] == []
        # Acting for someone else is refused before anything is reserved or recorded.
        publish = await client.post(
            "/api/v1/users/7/coupons/publish", json={"couponId": 1}, headers={"Authorization": f"Bearer {other}"}
        )
        assert_envelope(publish, 403, "FORBIDDEN")
        # Routes that are not a user's own stay public.
        assert (await client.get("/health/live")).status_code == 200
    conn = await guarded.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM coupon_requests") == 0
    finally:
        await conn.close()


def test_a_user_token_is_printed_by_the_cli_for_operators(guarded: System) -> None:
    token = guarded.run("user-token", "42", "--ttl", "60").stdout.decode().strip()
    assert token.startswith("u1.42.")


async def test_no_secret_appears_in_any_log(guarded: System, sandbox: Sandbox) -> None:
    # A migrate that creates its database logs where: it must not log the password. (A database of this
    # run's, never there before: the sandbox drops it at the end.)
    fresh = with_password(sandbox.database_url("security_fresh"))
    migrate = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "couponrush", "migrate"],
        env={**guarded.env, "COUPONRUSH_DATABASE_URL": fresh},
        capture_output=True,
        timeout=60,
        check=True,
    )
    output = (migrate.stdout + migrate.stderr).decode()
    assert "created database" in output
    logs = {role: guarded.log_of(role) for role in ("api", "relay", "worker")}
    logs["migrate"] = output
    assert all(logs.values())
    for secret in (ADMIN_TOKEN, USER_SECRET, DB_PASSWORD):
        leaked = [role for role, text in logs.items() if secret in text]
        assert leaked == [], (secret, leaked)
