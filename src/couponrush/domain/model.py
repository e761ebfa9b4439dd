"""The coupon and the rules that decide whether one more can be issued. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


class CouponStatus(enum.StrEnum):
    PUBLISHABLE = "PUBLISHABLE"
    UNPUBLISHABLE = "UNPUBLISHABLE"


class CouponState(enum.StrEnum):
    """What a coupon is now, derived from its stored status, its times and its counts (never stored)."""

    SCHEDULED = "SCHEDULED"  # publishable, its opening time not reached yet
    OPEN = "OPEN"  # admitting requests
    SOLD_OUT = "SOLD_OUT"  # every unit issued or reserved by a pending request
    CLOSED = "CLOSED"  # an administrator closed it (UNPUBLISHABLE)
    EXPIRED = "EXPIRED"  # past its expiry: over for good, whatever its status


class InvalidField(ValueError):
    """A value an operator gave breaks a rule; ``field`` is its name on the wire (``expiredAt``...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RejectReason(enum.StrEnum):
    """Why a request did not (or will not) get a coupon. Part of the public contract."""

    UNKNOWN_COUPON = "UNKNOWN_COUPON"
    NOT_OPEN = "NOT_OPEN"
    EXPIRED = "EXPIRED"
    SOLD_OUT = "SOLD_OUT"
    # The gate's word: this user already holds the coupon or has a request for it pending.
    ALREADY_REQUESTED = "ALREADY_REQUESTED"
    # The worker's word: this user already holds the coupon (a duplicate that reached the database).
    ALREADY_ISSUED = "ALREADY_ISSUED"
    # A request whose unit was reserved but which was never recorded (its API died, or took longer than
    # the grace period): its unit went back, and it can no longer be recorded. Its answer was never 200.
    NOT_RECORDED = "NOT_RECORDED"


class RequestStatus(enum.StrEnum):
    PENDING = "PENDING"
    ISSUED = "ISSUED"
    REJECTED = "REJECTED"


@dataclass(frozen=True, slots=True)
class NewCoupon:
    name: str
    discount_rate: Decimal
    quantity: int
    status: CouponStatus
    expired_at: datetime
    # None: it admits as soon as it is open; otherwise not before this instant (by the gate's clock).
    opens_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidField("name", "must not be blank")
        if not (Decimal(0) < self.discount_rate <= Decimal(1)):
            raise InvalidField("discountRate", "must be greater than 0 and at most 1")
        if self.quantity <= 0:
            raise InvalidField("quantity", "must be greater than 0")
        check_times(self.expired_at, self.opens_at)

    def check_not_over(self, now: datetime) -> None:
        """A new coupon must be able to admit someone: its expiry lies ahead."""
        if self.expired_at <= now:
            raise InvalidField("expiredAt", "must be in the future")


def check_times(expired_at: datetime, opens_at: datetime | None) -> None:
    if expired_at.tzinfo is None:
        raise InvalidField("expiredAt", "must carry a UTC offset")
    if opens_at is not None:
        if opens_at.tzinfo is None:
            raise InvalidField("opensAt", "must carry a UTC offset")
        if expired_at <= opens_at:
            raise InvalidField("expiredAt", "must be after opensAt")


@dataclass(frozen=True, slots=True)
class Coupon:
    id: int
    name: str
    discount_rate: Decimal
    quantity: int
    issued_count: int
    status: CouponStatus
    expired_at: datetime
    opens_at: datetime | None = None

    @property
    def remaining_quantity(self) -> int:
        return self.quantity - self.issued_count

    def state(self, now: datetime, pending: int) -> CouponState:
        """What it is now; ``pending`` counts its accepted requests not yet decided (each holds a unit).

        Expiry wins over everything (an expired coupon never admits again), an administrator's close
        over the schedule, the schedule over stock. ``now`` is the reader's clock: the gate itself
        opens by the Redis server's clock, so around ``opens_at`` the two may differ by the clocks' skew.
        """
        if now >= self.expired_at:
            return CouponState.EXPIRED
        if self.status is not CouponStatus.PUBLISHABLE:
            return CouponState.CLOSED
        if self.opens_at is not None and now < self.opens_at:
            return CouponState.SCHEDULED
        if self.issued_count + pending >= self.quantity:
            return CouponState.SOLD_OUT
        return CouponState.OPEN

    def closed_reason(self, now: datetime) -> RejectReason | None:
        """Why nobody at all can be issued this coupon now, or None when it is open.

        The order matters for the answer a user sees: an administrator's close wins over
        expiry, and expiry over stock (an expired coupon is "expired", not "sold out").
        """
        if self.status is not CouponStatus.PUBLISHABLE:
            return RejectReason.NOT_OPEN
        if now >= self.expired_at:
            return RejectReason.EXPIRED
        if self.remaining_quantity <= 0:
            return RejectReason.SOLD_OUT
        return None

    def is_open(self, now: datetime) -> bool:
        return self.closed_reason(now) is None

    def issue_decision(self, *, already_holds: bool, now: datetime) -> RejectReason | None:
        """The issuing rule for one user: None means "issue it", otherwise why not.

        A user who already holds the coupon is told so even when it has since sold out:
        that is the truthful answer to "did I get it?".
        """
        if already_holds:
            return RejectReason.ALREADY_ISSUED
        return self.closed_reason(now)

    def after_issuing_one(self) -> Coupon:
        if self.remaining_quantity <= 0:
            raise ValueError(f"coupon {self.id} has no quantity left")
        return dataclasses.replace(self, issued_count=self.issued_count + 1)


@dataclass(frozen=True, slots=True)
class UserCoupon:
    coupon_id: int
    user_id: int
    name: str
    discount_rate: Decimal
    issued_at: datetime
    expired_at: datetime


@dataclass(frozen=True, slots=True)
class IssueOutcome:
    """What the issuing transaction decided for one request, and the coupon after it."""

    request_id: str
    user_id: int
    coupon_id: int
    status: RequestStatus
    reason: RejectReason | None
    coupon: Coupon | None
    # True when this delivery found the request already decided (a redelivery): nothing changed.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """What the database says the admission gate of one coupon must hold.

    ``reservations`` maps each user with a unit reserved (issued, or requested and pending) to the
    request that holds it. Units left to reserve = quantity - len(reservations), never below zero.
    """

    coupon: Coupon
    reservations: dict[int, str]

    @property
    def stock(self) -> int:
        return max(0, self.coupon.quantity - len(self.reservations))


@dataclass(frozen=True, slots=True)
class RequestView:
    """Where one accepted request stands."""

    request_id: str
    user_id: int
    coupon_id: int
    status: RequestStatus
    reason: RejectReason | None
    requested_at: datetime
    decided_at: datetime | None
    issued_at: datetime | None


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """An accepted request still to be decided, as the database recorded it."""

    request_id: str
    user_id: int
    coupon_id: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What the issuing rules decided for one request; ``coupon`` is the coupon right after it."""

    request: PendingRequest
    reason: RejectReason | None  # None: issue it
    coupon: Coupon | None

    @property
    def issued(self) -> bool:
        return self.reason is None


def decide_in_order(
    requests: Sequence[PendingRequest],
    coupons: Mapping[int, Coupon],
    holders: Set[tuple[int, int]],
    now: datetime,
) -> list[Decision]:
    """Apply the issuing rules to ``requests`` one after another, in the order given.

    The same rules as one request at a time (``Coupon.issue_decision``), with each decision seeing
    the ones before it: a coupon's count grows as it is issued, and a user issued a coupon earlier
    in the sequence holds it for the rest. ``holders`` is the (user id, coupon id) pairs already
    held before the first request. Issuing a batch this way gives exactly the outcome of issuing
    its requests singly in the same order.
    """
    current = dict(coupons)
    held = set(holders)
    decisions: list[Decision] = []
    for request in requests:
        coupon = current.get(request.coupon_id)
        if coupon is None:
            decisions.append(Decision(request, RejectReason.UNKNOWN_COUPON, None))
            continue
        reason = coupon.issue_decision(already_holds=(request.user_id, coupon.id) in held, now=now)
        if reason is None:
            coupon = current[coupon.id] = coupon.after_issuing_one()
            held.add((request.user_id, coupon.id))
        decisions.append(Decision(request, reason, coupon))
    return decisions
