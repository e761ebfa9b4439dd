"""What must hold after a drop, in one place: for the benchmark's reports, the end-to-end tests and the
chaos suite alike.

- Every drop, any gate, any fault: no more issued than the quantity; exactly the quantity when demand
  exceeded it; nobody holds the coupon twice.
- The report's flag gate (no reservation): every user who holds it was told OK; told OK minus issued
  is its over-acceptance, reported, not hidden.
- The reserving gate: OK means you got it (told OK = issued, exactly).
- After faults (chaos): nothing accepted is lost, no 5xx, the gate agrees with the database again, and
  every accepted request is decided within a bound of the fault's repair (``decision_waits``).
  Told OK = issued is not promised there: a request committed as its answer failed (503) is issued
  without having been told OK.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg
from redis.asyncio import Redis

from couponrush.adapters.gate import available_key, gate_key, holders_key


class Told(Protocol):
    """One answer a user got (a load generator's result, a test client's answer)."""

    @property
    def user_id(self) -> int: ...

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str | None: ...


class ToldWithId(Told, Protocol):
    @property
    def request_id(self) -> str | None: ...


class NotSettled(TimeoutError):
    """Accepted requests were still pending when the wait ended."""


@dataclass(frozen=True, slots=True)
class Settled:
    """One coupon's drop as the database has it."""

    holders: list[int]  # the users holding the coupon, in the order it was issued to them
    issued_count: int  # coupons.issued_count
    decisions: Counter[tuple[str, str | None]]  # (status, reason) -> accepted requests
    statuses: dict[str, str]  # request id -> status, of every accepted request
    time_to_issue_s: list[float]  # accepted -> issued, per holder, in the same order
    issued_at: list[datetime]

    @property
    def first_issued_at(self) -> datetime | None:
        return self.issued_at[0] if self.issued_at else None

    @property
    def last_issued_at(self) -> datetime | None:
        return self.issued_at[-1] if self.issued_at else None


async def wait_decided(conn: asyncpg.Connection, coupon_id: int, timeout: float, interval: float = 0.05) -> None:
    """Until no accepted request of the coupon is pending; ``NotSettled`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while pending := await conn.fetchval(
        "SELECT count(*) FROM coupon_requests WHERE coupon_id = $1 AND status = 'PENDING'", coupon_id
    ):
        if time.monotonic() > deadline:
            raise NotSettled(f"{pending} accepted request(s) of coupon {coupon_id} still pending after {timeout}s")
        await asyncio.sleep(interval)


async def read_settled(conn: asyncpg.Connection, coupon_id: int) -> Settled:
    rows = await conn.fetch(
        "SELECT uc.user_id, uc.issued_at, r.requested_at FROM user_coupons uc"
        " JOIN coupon_requests r ON r.request_id = uc.request_id WHERE uc.coupon_id = $1 ORDER BY uc.issued_at",
        coupon_id,
    )
    requests = await conn.fetch(
        "SELECT request_id, status, reason FROM coupon_requests WHERE coupon_id = $1", coupon_id
    )
    issued_count = await conn.fetchval("SELECT issued_count FROM coupons WHERE id = $1", coupon_id)
    return Settled(
        holders=[r["user_id"] for r in rows],
        issued_count=issued_count or 0,
        decisions=Counter((r["status"], r["reason"]) for r in requests),
        statuses={r["request_id"]: r["status"] for r in requests},
        time_to_issue_s=[(r["issued_at"] - r["requested_at"]).total_seconds() for r in rows],
        issued_at=[r["issued_at"] for r in rows],
    )


async def settle(database_url: str, coupon_id: int, timeout: float = 90) -> Settled:
    """Wait until every accepted request of the coupon is decided; the drop as the database has it then."""
    conn = await asyncpg.connect(database_url)
    try:
        await wait_decided(conn, coupon_id, timeout)
        return await read_settled(conn, coupon_id)
    finally:
        await conn.close()


def drop_checks(answers: Sequence[Told], settled: Settled, quantity: int, *, reserving: bool) -> dict[str, object]:
    """The figures of a drop, and what must hold after it (booleans); with a reserving gate, also told OK = issued."""
    told_ok = [a.user_id for a in answers if a.status == 200]
    issued = settled.holders
    demand = len({a.user_id for a in answers})
    checks: dict[str, object] = {
        "issued": len(issued),
        "quantity": quantity,
        "issued_within_quantity": len(issued) <= quantity,
        "issued_equals_quantity_when_demand_exceeds_it": demand < quantity or len(issued) == quantity,
        "no_duplicates": len(issued) == len(set(issued)),
        "told_ok": len(told_ok),
        "over_accepted": len(told_ok) - len(issued),
        "every_issued_user_was_told_ok": set(issued) <= set(told_ok),
    }
    if reserving:
        checks["told_ok_equals_issued"] = sorted(told_ok) == sorted(issued)
    return checks


def fault_checks(
    answers: Sequence[ToldWithId], settled: Settled, quantity: int, gate_holders: Sequence[int]
) -> dict[str, bool]:
    """What must hold after faults with the reserving gate (see the module's docstring)."""
    told_ok = [a for a in answers if a.status == 200]
    holders = settled.holders
    demand = len({a.user_id for a in answers})
    return {
        "issued_within_quantity": settled.issued_count <= quantity and len(holders) <= quantity,
        "issued_equals_quantity_when_demand_exceeds_it": demand <= quantity
        or settled.issued_count == quantity == len(holders),
        "no_duplicates": len(holders) == len(set(holders)) and len({a.user_id for a in told_ok}) == len(told_ok),
        "every_user_told_ok_holds_it": {a.user_id for a in told_ok} <= set(holders),
        "nothing_accepted_lost": all(settled.statuses.get(a.request_id or "") == "ISSUED" for a in told_ok),
        "no_5xx_answer": all(a.status < 500 for a in answers),
        "gate_matches_database": sorted(gate_holders) == sorted(holders),
    }


async def decision_waits(conn: asyncpg.Connection, request_ids: Sequence[str], since: datetime) -> dict[str, float]:
    """Per request: seconds from ``since`` (a fault's repair), or from its acceptance if later, until it was
    decided (issued or refused); ``inf`` for one still pending or never recorded."""
    rows = await conn.fetch(
        "SELECT request_id, extract(epoch FROM decided_at - greatest(requested_at, $2)) AS wait"
        " FROM coupon_requests WHERE request_id = ANY($1::text[])",
        list(request_ids),
        since,
    )
    found = {r["request_id"]: float("inf") if r["wait"] is None else float(r["wait"]) for r in rows}
    return {rid: found.get(rid, float("inf")) for rid in request_ids}


def decided_within(waits: dict[str, float], bound_s: float) -> bool:
    """Every accepted request decided within ``bound_s`` (see ``decision_waits``)."""
    return all(wait <= bound_s for wait in waits.values())


def failed(checks: dict[str, object]) -> list[str]:
    """The names of the checks that did not hold (figures are not checks)."""
    return [name for name, held in checks.items() if held is False]


async def gate_holders(redis: Redis, coupon_id: int) -> list[int]:
    """The users the reserving gate holds a unit for."""
    return sorted(int(u) for u in await redis.hkeys(holders_key(coupon_id)))  # type: ignore[misc]


async def assert_ok_means_issued(
    database_url: str, redis: Redis, coupon_id: int, answers: Sequence[Told], quantity: int
) -> Settled:
    """A drop with the reserving gate and no fault, demand above the quantity: OK means you got it, exactly.

    Exactly ``quantity`` users told OK, each once, each holding the coupon, nobody else; every other
    answer a named SOLD_OUT or ALREADY_REQUESTED; nothing accepted refused later; the gate sold out,
    holding exactly those users, and the report's flag false.
    """
    told_ok = [a.user_id for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(told_ok) == quantity, Counter((a.status, a.reason) for a in answers)
    assert len(set(told_ok)) == quantity  # nobody told OK twice
    assert {(a.status, a.reason) for a in refused} <= {(409, "SOLD_OUT"), (409, "ALREADY_REQUESTED")}, Counter(
        (a.status, a.reason) for a in refused
    )
    # A refused user who was never told OK got SOLD_OUT or ALREADY_REQUESTED, never silence.
    assert all(a.reason for a in refused)

    settled = await settle(database_url, coupon_id)
    checks = drop_checks(answers, settled, quantity, reserving=True)
    assert failed(checks) == [], checks  # exactly those told OK hold it, nobody else, nobody twice
    assert settled.decisions == Counter({("ISSUED", None): quantity})  # nothing accepted was refused later

    assert await redis.hget(gate_key(coupon_id), "stock") == b"0"  # type: ignore[misc]
    assert await gate_holders(redis, coupon_id) == sorted(told_ok)
    assert await redis.get(available_key(coupon_id)) == b"false"
    return settled
