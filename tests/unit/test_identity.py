from __future__ import annotations

from couponrush.config import redacted
from couponrush.service.identity import token_user, user_token

NOW = 1_800_000_000.0


def test_a_token_names_its_user_until_it_expires() -> None:
    token = user_token("s3", 7, ttl_s=60, now=NOW)
    assert token_user("s3", token, now=NOW) == 7
    assert token_user("s3", token, now=NOW + 61) is None
    assert token_user("other", token, now=NOW) is None


def test_a_token_altered_in_any_part_is_refused() -> None:
    token = user_token("s3", 7, ttl_s=60, now=NOW)
    version, user, expires, signature = token.split(".")
    for altered in (
        f"{version}.8.{expires}.{signature}",
        f"{version}.{user}.{int(expires) + 999}.{signature}",
        f"u2.{user}.{expires}.{signature}",
        f"{version}.{user}.{expires}.{signature[:-1]}A",
        f"{version}.{user}.{expires}",
        "",
    ):
        assert token_user("s3", altered, now=NOW) is None, altered


def test_urls_are_logged_without_their_password() -> None:
    assert redacted("postgresql://app:hunter2@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redacted("postgresql://app@db/x") == "postgresql://app@db/x"
