"""Overload: past the in-flight bound a publish is shed at once with 503 + Retry-After, nothing accepted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from couponrush.domain.events import PublishRequested
from couponrush.entrypoints.api.publish import Inflight, publish
from couponrush.service.admission import Admission


@dataclass
class SlowAdmission:
    """Admits every request once ``go`` is set."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    asked: int = 0

    async def request(self, user_id: int, coupon_id: int) -> PublishRequested:
        self.asked += 1
        await self.go.wait()
        return PublishRequested(
            request_id=f"r{user_id}", user_id=user_id, coupon_id=coupon_id, requested_at=datetime.now(UTC)
        )


async def test_past_the_bound_a_publish_is_shed_at_once_and_admission_never_asked() -> None:
    slow, inflight = SlowAdmission(), Inflight(limit=2)
    admission = cast(Admission, slow)
    first = [asyncio.create_task(publish(admission, user, 1, inflight)) for user in (1, 2)]
    await asyncio.sleep(0)  # both are in flight now
    shed = await publish(admission, 3, 1, inflight)
    body: dict[str, Any] = orjson.loads(shed.body)
    assert (shed.status, body["data"]["reason"], dict(shed.headers)[b"retry-after"]) == (503, "UNAVAILABLE", b"1")
    assert slow.asked == 2  # the shed request asked nothing
    slow.go.set()
    assert [a.status for a in await asyncio.gather(*first)] == [200, 200]
    assert inflight.count == 0
    assert (await publish(admission, 4, 1, inflight)).status == 200  # room again
