"""Bad deliveries mid-drop: the same events duplicated and reordered, poison records mixed in.

Both go through the outbox, so the relay stays the topic's only producer (as in production) and the
records land on the coupon's partition among the real requests.
"""

from __future__ import annotations

import json
import re

import pytest

from couponrush.config import PUBLISH_REQUESTED_TOPIC
from couponrush_bench.polling import eventually
from tests.chaos.harness import Chaos, Faults, chaos_drop

pytestmark = pytest.mark.slow


async def test_duplicated_and_reordered_deliveries(chaos: Chaos) -> None:
    system, _ = await chaos.start("duplicates")

    async def fault(faults: Faults) -> None:
        conn = await system.db()
        try:
            for copy in (1, 2):
                # Every request event sent so far, again, newest first (reversed order), twice.
                copied = await conn.execute(
                    "INSERT INTO outbox (topic, key, payload, headers)"
                    " SELECT topic, key, payload, headers || jsonb_build_object('chaos-copy', $2::text)"
                    " FROM outbox WHERE topic = $1 AND sent_at IS NOT NULL ORDER BY id DESC",
                    PUBLISH_REQUESTED_TOPIC,
                    str(copy),
                )
                faults.note(f"re-delivered {copied.split()[-1]} events in reverse order")
        finally:
            await conn.close()

    result = await chaos_drop(system, "7. duplicated + reordered deliveries", fault)
    conn = await system.db()
    try:
        # Each request decided once: one ISSUED row per holder, no coupon event published twice.
        published = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE topic <> $1 AND headers->>'event-type' = 'CouponPublished'",
            PUBLISH_REQUESTED_TOPIC,
        )
    finally:
        await conn.close()
    assert published == result.issued


POISON: list[bytes] = [
    b"\x00\xff not json at all",
    b"{}",
    b'{"type":"CouponPublishRequested","version":1,"requestId":"p1","userId":"seven","couponId":1,'
    b'"requestedAt":"2026-01-01T00:00:00Z"}',
    b'{"type":"CouponPublishRequested","version":1,"requestId":"p2","userId":7,"couponId":1,'
    b'"requestedAt":"2026-01-01T00:00:00Z","extra":"field"}',
    b'{"type":"CouponPublishRequested","version":1,"requestId":"p3","userId":0,"couponId":1,'
    b'"requestedAt":"2026-01-01T00:00:00Z"}',
    b'{"type":"CouponPublishRequested","version":9,"requestId":"p4","userId":7,"couponId":1,'
    b'"requestedAt":"2026-01-01T00:00:00"}',
    b"[" * 5000,
]


async def test_poison_records_mixed_into_the_topic(chaos: Chaos) -> None:
    system, _ = await chaos.start("poison")

    async def fault(faults: Faults) -> None:
        conn = await system.db()
        try:
            coupon_id = await conn.fetchval("SELECT max(id) FROM coupons")
            for payload in POISON * 3:
                await conn.execute(
                    "INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
                    PUBLISH_REQUESTED_TOPIC,
                    str(coupon_id),
                    payload,
                    json.dumps({"event-type": "CouponPublishRequested"}),
                )
            faults.note(f"{len(POISON) * 3} poison records")
        finally:
            await conn.close()

    await chaos_drop(system, "8. poison records mixed into the topic", fault)

    async def dead_letters() -> int:
        listing = system.run("dlq", "list").stderr.decode()
        found = re.search(r"(\d+) dead letter\(s\)", listing)
        return int(found.group(1)) if found else -1

    # Each poison record is parked with its reason (list reads the whole DLQ; the worker moved on past them).
    assert await eventually(dead_letters, lambda n: n >= len(POISON) * 3, timeout=60, interval=1) == len(POISON) * 3
    listing = system.run("dlq", "list").stderr.decode()
    assert "MALFORMED" in listing
    assert "outside.coupon.publish.requested.v1[" in listing
