"""Settling a batch of deliveries: which decide, which replay an earlier decision, and what each is told.

Pure: the issuer adapter reads the request rows, coupons and holders under locks, asks ``settle``,
and writes what it returns. A single delivery is a batch of one; the in-memory fakes settle with the
same function, so the rules live here only.

- The first delivery of a pending request decides it (``decide_in_order``, in delivery order).
- A delivery of a request decided before the batch, or a second copy within it, is a replay: it
  reports the earlier decision and changes nothing.
- Every outcome carries its coupon as it stands after the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime

from couponrush.domain.events import PublishRequested
from couponrush.domain.model import (
    Coupon,
    Decision,
    IssueOutcome,
    PendingRequest,
    RejectReason,
    RequestStatus,
    decide_in_order,
)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request row as the database holds it when the batch starts (after registering the batch's own)."""

    request_id: str
    user_id: int
    coupon_id: int
    status: RequestStatus
    reason: RejectReason | None


@dataclass(frozen=True, slots=True)
class Settlement:
    """What to write (the new decisions) and what each delivery is told (one outcome per delivery, in order)."""

    decisions: list[Decision]
    outcomes: list[IssueOutcome]

    @property
    def issued(self) -> list[Decision]:
        return [d for d in self.decisions if d.issued]


def first_deliveries(
    events: Sequence[PublishRequested], recorded: Mapping[str, RecordedRequest]
) -> list[PendingRequest]:
    """The pending requests this batch decides, each once, in the order of their first delivery."""
    pending: list[PendingRequest] = []
    for request_id in dict.fromkeys(e.request_id for e in events):
        row = recorded[request_id]
        if row.status is RequestStatus.PENDING:
            pending.append(PendingRequest(request_id, row.user_id, row.coupon_id))
    return pending


def settle(
    events: Sequence[PublishRequested],
    recorded: Mapping[str, RecordedRequest],
    coupons: Mapping[int, Coupon],
    holders: Set[tuple[int, int]],
    now: datetime,
) -> Settlement:
    """Decide the batch's pending requests in delivery order and tell every delivery its outcome.

    ``recorded`` holds a row for every event's request id (the adapter registers unknown ones first);
    ``holders`` is the (user id, coupon id) pairs already issued before the batch.
    """
    decisions = decide_in_order(first_deliveries(events, recorded), coupons, holders, now)
    final = dict(coupons)
    for made in decisions:
        if made.coupon is not None:
            final[made.coupon.id] = made.coupon
    by_request = {d.request.request_id: d for d in decisions}
    outcomes: list[IssueOutcome] = []
    told: set[str] = set()
    for event in events:
        decision = by_request.get(event.request_id)
        if decision is not None and event.request_id not in told:
            told.add(event.request_id)
            outcomes.append(_outcome(decision, final.get(decision.request.coupon_id)))
            continue
        # Decided before this batch, or an earlier copy in it decided it: a replay.
        row = recorded[event.request_id]
        status = row.status if decision is None else status_of(decision)
        reason = row.reason if decision is None else decision.reason
        outcomes.append(
            IssueOutcome(
                request_id=event.request_id,
                user_id=row.user_id,
                coupon_id=row.coupon_id,
                status=status,
                reason=reason,
                coupon=final.get(row.coupon_id),
                replayed=True,
            )
        )
    return Settlement(decisions, outcomes)


def status_of(decision: Decision) -> RequestStatus:
    return RequestStatus.ISSUED if decision.issued else RequestStatus.REJECTED


def _outcome(decision: Decision, coupon: Coupon | None) -> IssueOutcome:
    return IssueOutcome(
        request_id=decision.request.request_id,
        user_id=decision.request.user_id,
        coupon_id=decision.request.coupon_id,
        status=status_of(decision),
        reason=decision.reason,
        coupon=coupon,
    )
