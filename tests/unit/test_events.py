"""What may cross Kafka, and what is malformed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from couponrush.domain.events import MalformedEvent, PublishRequested

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_a_request_event_round_trips_in_camel_case() -> None:
    event = PublishRequested(request_id="r1", user_id=7, coupon_id=3, requested_at=NOW)
    raw = event.to_json()
    assert b'"userId":7' in raw
    assert b'"couponId":3' in raw
    assert PublishRequested.from_json(raw) == event


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"requestId":"r","userId":"7","couponId":3,"requestedAt":"2026-11-25T12:00:00Z"}',
        b'{"requestId":"r","userId":-1,"couponId":3,"requestedAt":"2026-11-25T12:00:00Z"}',
        b'{"requestId":"r","userId":1,"couponId":3,"requestedAt":"2026-11-25T12:00:00"}',
        b'{"requestId":"r","userId":1,"couponId":3,"requestedAt":"2026-11-25T12:00:00Z","extra":1}',
        b'{"type":"Other","requestId":"r","userId":1,"couponId":3,"requestedAt":"2026-11-25T12:00:00Z"}',
    ],
)
def test_malformed_request_events_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedEvent):
        PublishRequested.from_json(raw)
