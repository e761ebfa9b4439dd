"""Opt-in user identity: an HMAC-signed bearer token that names one user id (``COUPONRUSH_USER_TOKEN_SECRET``).

Token: ``u1.<userId>.<expiresAtEpochSeconds>.<signature>``, the signature being base64url
HMAC-SHA256 over ``u1.<userId>.<expiresAt>`` with the shared secret. Whoever signs in users
(a gateway, a login service) issues them; ``couponrush user-token`` makes one for operators and tests.
Without the secret configured, user routes trust the path's user id, as the report's API does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

_VERSION = "u1"


def _sign(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def user_token(secret: str, user_id: int, *, ttl_s: int = 3600, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl_s)
    payload = f"{_VERSION}.{user_id}.{expires}"
    return f"{payload}.{_sign(secret, payload)}"


def token_user(secret: str, token: str, *, now: float | None = None) -> int | None:
    """The user id a valid, unexpired token names; None for anything else."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    payload = ".".join(parts[:3])
    if not hmac.compare_digest(_sign(secret, payload).encode(), parts[3].encode()):
        return None
    if int(parts[2]) <= (time.time() if now is None else now):
        return None
    return int(parts[1])
