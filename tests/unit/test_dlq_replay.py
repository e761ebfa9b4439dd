"""Replaying dead letters: reserve again first, re-publish the original record, keep what has no unit left."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import Coupon, CouponStatus
from couponrush.service.dlq import DeadLetter, DeadLetterReplay
from couponrush.service.ports import InboundRecord, OutboundMessage
from tests.support.fakes import FakeGate, FakeLedger

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass
class FakeRequeue:
    queued: list[OutboundMessage] = field(default_factory=list)

    async def enqueue(self, message: OutboundMessage) -> None:
        self.queued.append(message)


def dead_letter(offset: int, value: bytes, request_id: str | None = None) -> InboundRecord:
    headers = {
        "dlq-reason": b"FAILED",
        "dlq-error": b"Boom: x",
        "dlq-original-topic": b"requests",
        "dlq-original-partition": b"2",
        "dlq-original-offset": b"40",
        "dlq-attempts": b"5",
    }
    if request_id:
        headers["request-id"] = request_id.encode()
    return InboundRecord(topic="requests.dlq", partition=0, offset=offset, key=b"1", value=value, headers=headers)


def request(request_id: str, user_id: int) -> bytes:
    return PublishRequested(request_id=request_id, user_id=user_id, coupon_id=1, requested_at=NOW).to_json()


async def gate_with(quantity: int) -> FakeGate:
    gate = FakeGate()
    coupon = Coupon(1, "c", Decimal("0.1"), quantity, 0, CouponStatus.PUBLISHABLE, NOW + timedelta(hours=1))
    await gate.open(coupon, NOW, created=True)
    return gate


def test_a_dead_letter_reads_back_where_it_came_from() -> None:
    letter = DeadLetter.of(dead_letter(3, request("r1", 7), "r1"))
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == ("requests", 2, 40)
    assert (letter.reason, letter.attempts, letter.request_id) == ("FAILED", 5, "r1")
    message = letter.original_message()
    assert message.topic == "requests"
    assert message.key == "1"
    assert not any(k.startswith("dlq-") and k != "dlq-replayed-from" for k in message.headers)
    assert message.headers["request-id"] == "r1"


async def test_replay_reserves_a_unit_again_before_re_publishing() -> None:
    gate = await gate_with(1)
    ledger = FakeLedger(pending={"r1", "r2"}, dead={"r1", "r2"})
    requeue = FakeRequeue()
    replay = DeadLetterReplay(gate=gate, ledger=ledger, requeue=requeue, clock=lambda: NOW)
    report = await replay.replay(
        [dead_letter(0, request("r1", 7), "r1"), dead_letter(1, request("r2", 8), "r2"), dead_letter(2, b"{junk")]
    )
    assert gate.holders[1] == {7: "r1"}  # r1 got the only unit back
    assert [d.offset for d in report.republished] == [0, 2]  # junk goes back as it was
    assert [(d.request_id, why) for d, why in report.kept] == [("r2", "SOLD_OUT")]
    assert ledger.dead == {"r2"}  # still dead-lettered, so rebuilds don't reserve for it
    assert [m.payload for m in requeue.queued] == [request("r1", 7), b"{junk"]
