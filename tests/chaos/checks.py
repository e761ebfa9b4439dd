"""What a chaos run checks once the drop is over: the invariants, every accepted request decided within 60 s
of the fault's repair, the gate equal to the database again, and a fresh request issued within 30 s."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from datetime import UTC, datetime

import httpx

from couponrush_bench import invariants
from couponrush_bench.harness import ADMIN_TOKEN, System, create_coupon
from couponrush_bench.polling import eventually
from tests.chaos.drop import Answer
from tests.chaos.phases import Phase, Trigger
from tests.chaos.stage import ChaosResult, Stage

DECIDED_WITHIN_S = 60.0  # accepted means decided within this long of the fault's repair
FRESH_ISSUED_WITHIN_S = 30.0  # after the run, a fresh request is issued within this long
SETTLE_AFTER_REPAIR_S = 90.0  # how long the run waits for the accepted requests (a failed run: how late)


async def check(
    stage: Stage,
    scenario: str,
    phase: Phase,
    answers: list[Answer],
    quantity: int,
    trigger: Trigger,
    seed: int,
    test: str,
) -> ChaosResult:
    system, faults, coupon_id = stage.system, stage.faults, stage.coupon_id
    assert faults.first_at is not None
    assert faults.repaired_at is not None
    assert faults.repaired_wall is not None
    told_ok = [a for a in answers if a.status == 200]
    conn = await system.db()
    try:
        # Recovered = every accepted request decided (issued or refused) again. A run that never gets
        # there is still recorded (its "nothing accepted lost" fails), then the test fails.
        wait = max(5.0, faults.repaired_at + SETTLE_AFTER_REPAIR_S - time.monotonic())
        with contextlib.suppress(invariants.NotSettled):
            await invariants.wait_decided(conn, coupon_id, wait, interval=0.2)
        settled_s = time.monotonic() - faults.first_at
        repaired = datetime.fromtimestamp(faults.repaired_wall, UTC)
        waits = await invariants.decision_waits(conn, [a.request_id or "" for a in told_ok], since=repaired)
        first_after = await conn.fetchval(
            "SELECT extract(epoch FROM min(requested_at)) FROM coupon_requests"
            " WHERE coupon_id = $1 AND requested_at > to_timestamp($2)",
            coupon_id,
            faults.first_wall,
        )
        settled = await invariants.read_settled(conn, coupon_id)
    finally:
        await conn.close()
    in_gate = await gate_after_reconcile(system, coupon_id, settled.holders)
    fresh_s = await fresh_request_issued_s(stage)

    checks: dict[str, bool] = {
        **invariants.fault_checks(answers, settled, quantity, in_gate),
        "every_request_answered": all(a.status != 0 and a.reason != "NOT_ENVELOPE" for a in answers),
        "accepted_decided_within_60s_of_repair": invariants.decided_within(waits, DECIDED_WITHIN_S),
        "fresh_request_issued_within_30s": fresh_s is not None,
    }
    worst = max(waits.values(), default=0.0)
    return ChaosResult(
        scenario=scenario,
        phase=phase.value,
        seed=seed,
        test=test,
        requests=len(answers),
        users=len({a.user_id for a in answers}),
        quantity=quantity,
        trigger=trigger.describe(),
        faults=faults.injected,
        answers={f"{s} {r or ''}".strip(): n for (s, r), n in Counter((a.status, a.reason) for a in answers).items()},
        told_ok=len(told_ok),
        issued=settled.issued_count,
        invariants=checks,
        recovery_s=None if math.isinf(worst) else round(max(0.0, worst), 1),
        outage_s=round(faults.repaired_at - faults.first_at, 1),
        fresh_issued_s=fresh_s,
        settled_s=round(settled_s, 1),
        admitting_again_s=None if first_after is None else round(float(first_after) - (faults.first_wall or 0), 1),
        drop_s=0.0,
        at_answer=0,
        notes={
            "issued but not told OK (answered 503/409 after a commit)": len(
                set(settled.holders) - {a.user_id for a in told_ok}
            ),
            "retried requests": sum(a.attempts > 1 for a in answers),
            "logs": str(system.log_dir / system.name) + "-*.log",
        },
    )


async def gate_after_reconcile(system: System, coupon_id: int, holders: list[int]) -> list[int]:
    """The gate's holders once it matches the database (a gate that drifted during the fault is repaired by
    the worker's periodic reconciliation, every 5 s here), or as they are after 40 s."""
    redis = system.redis()

    async def gate_holders() -> list[int]:
        try:
            return await invariants.gate_holders(redis, coupon_id)
        except OSError:
            return []

    try:
        return await eventually(gate_holders, lambda g: g == sorted(holders), timeout=40, interval=0.5)
    except AssertionError:
        return await gate_holders()
    finally:
        await redis.aclose()


async def fresh_request_issued_s(stage: Stage, within: float = FRESH_ISSUED_WITHIN_S) -> float | None:
    """A fresh coupon, a fresh user's request for it: seconds from the first attempt until it is ISSUED, or
    None if not within ``within`` (the pipeline is live: no stuck consumer group, no relay standing by)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + within
    user_id = 900_000_000 + stage.rng.randrange(1_000_000)
    urls = stage.api_urls
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=u, timeout=10)) for u in urls]
        coupon_id: int | None = None
        attempt = 0
        while loop.time() < deadline:
            client = clients[attempt % len(clients)]
            attempt += 1
            with contextlib.suppress(httpx.TransportError, AssertionError):
                if coupon_id is None:
                    coupon_id = await create_coupon(client, quantity=1, admin_token=ADMIN_TOKEN, name="fresh")
                response = await client.post(f"/api/v1/users/{user_id}/coupons/publish", json={"couponId": coupon_id})
                if response.status_code not in (200, 409, 503):
                    return None
                if response.status_code != 503:  # 409 ALREADY_REQUESTED: an earlier attempt was accepted
                    break
            await asyncio.sleep(0.2)
        if coupon_id is None:
            return None
        while loop.time() < deadline:
            with contextlib.suppress(httpx.TransportError):
                response = await clients[0].get(f"/api/v1/users/{user_id}/coupons/{coupon_id}/request")
                status = (response.json().get("data") or {}).get("status") if response.status_code == 200 else None
                if status == "ISSUED":
                    return round(loop.time() - started, 1)
                if status == "REJECTED":
                    return None
            await asyncio.sleep(0.1)
    return None
