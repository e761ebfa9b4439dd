from __future__ import annotations

import pytest

from couponrush.adapters.db import database_name, normalize_dsn
from couponrush.config import Settings, dlq_topic


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h:5432/db",
        "postgres://u@h:5432/db",
        "postgresql+asyncpg://u@h:5432/db",
    ],
)
def test_operators_can_paste_any_common_postgres_url(url: str) -> None:
    assert normalize_dsn(url) == "postgresql://u@h:5432/db"
    assert database_name(url) == "db"


def test_a_non_postgres_url_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="COUPONRUSH_DATABASE_URL"):
        normalize_dsn("mysql://u@h/db")


def test_settings_come_from_the_environment_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUPONRUSH_HTTP_PORT", "9001")
    monkeypatch.setenv("COUPONRUSH_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    settings = Settings()
    assert settings.http_port == 9001
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.kafka_configured


def test_defaults_follow_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COUPONRUSH_ADMIN_TOKEN", "COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS", "COUPONRUSH_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.publish_requested_topic == "outside.coupon.publish.requested.v1"
    assert settings.published_topic == "outside.coupon.published.v1"
    assert settings.consumer_group == "coupon"
    assert settings.kafka_partitions == 3
    assert settings.http_port == 8000
    assert settings.admin_token is None
    assert not settings.kafka_configured
    assert dlq_topic(settings.publish_requested_topic) == "outside.coupon.publish.requested.v1.dlq"


def test_the_readme_lists_every_setting_once_and_nothing_else() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    listed = [name for line in table.splitlines()[2:] for name in re.findall(r"`([A-Z0-9_]+)`", line.split("|")[1])]
    assert sorted(listed) == sorted(name.upper() for name in Settings.model_fields)
    assert len(listed) == len(set(listed))
