"""The events that cross Kafka: one typed, versioned model per topic, nothing else goes on the wire.

Messages are JSON with camelCase fields. Unknown fields are rejected, so a producer bug
shows up as a dead letter with a reason rather than as a silently misread request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PositiveId = Annotated[int, Field(strict=True, gt=0, le=2**63 - 1)]


class _Event(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class PublishRequested(_Event):
    """A user asked for a coupon and the gate let the request through."""

    type: Literal["CouponPublishRequested"] = "CouponPublishRequested"
    version: Literal[1] = 1
    request_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    user_id: PositiveId
    coupon_id: PositiveId
    requested_at: AwareDatetime

    @classmethod
    def from_json(cls, raw: bytes | str) -> PublishRequested:
        return cls.model_validate_json(raw)


class Published(_Event):
    """A coupon was issued to a user (committed in the database)."""

    type: Literal["CouponPublished"] = "CouponPublished"
    version: Literal[1] = 1
    request_id: str
    user_id: int
    coupon_id: int
    issued_at: datetime
    issued_count: int
    quantity: int
