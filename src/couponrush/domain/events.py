"""The events that cross Kafka: one typed, versioned struct per topic, nothing else goes on the wire.

Messages are JSON with camelCase fields. Unknown fields are rejected, so a producer bug shows up as
a dead letter with a reason rather than as a silently misread request. msgspec structs: decoding and
validating a record costs about a microsecond (the worker decodes every record it reads), and
building one costs no validation (the service builds them from values it checked already).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

PositiveId = Annotated[int, msgspec.Meta(gt=0, le=2**63 - 1)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]

# What a malformed record raises on decoding (the worker parks it on the dead-letter topic).
MalformedEvent = msgspec.DecodeError


class PublishRequested(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """A user asked for a coupon and the gate let the request through."""

    type: Literal["CouponPublishRequested"] = "CouponPublishRequested"
    version: Literal[1] = 1
    request_id: RequestId
    user_id: PositiveId
    coupon_id: PositiveId
    requested_at: AwareDatetime

    def to_json(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> PublishRequested:
        """Decode and validate; raises ``MalformedEvent`` saying what is wrong."""
        return _REQUESTED.decode(raw)


class Published(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """A coupon was issued to a user (committed in the database)."""

    type: Literal["CouponPublished"] = "CouponPublished"
    version: Literal[1] = 1
    request_id: str
    user_id: int
    coupon_id: int
    issued_at: datetime
    issued_count: int
    quantity: int

    def to_json(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Published:
        return _PUBLISHED.decode(raw)


_ENCODER = msgspec.json.Encoder()
_REQUESTED = msgspec.json.Decoder(PublishRequested)
_PUBLISHED = msgspec.json.Decoder(Published)
