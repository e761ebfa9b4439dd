"""Processes dying mid-drop: worker and relay SIGKILLed, two workers losing one, SIGTERM under load."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from couponrush_bench.harness import System
from couponrush_bench.polling import eventually
from tests.chaos.harness import Chaos, Faults, chaos_drop


async def kill_and_restart_worker(system: System, faults: Faults, *, name: str = "worker") -> None:
    # Only kill a worker that has joined its group: one leaving mid-join stalls Tansu's group for minutes.
    assigned = system.worker_assignments(name)
    assert system.stop(name, signal.SIGKILL) == -signal.SIGKILL
    faults.note(f"{name} SIGKILL")
    system.start("worker", name=name)
    await system.wait_worker_assigned(times=assigned + 1, name=name)


# Once in the default suite (the nightly-sized subset); three times with `make chaos`.
@pytest.mark.parametrize("kills", [1, pytest.param(3, marks=pytest.mark.slow)])
async def test_worker_sigkilled_mid_batch_and_restarted(chaos: Chaos, kills: int) -> None:
    system, _ = await chaos.start(f"worker-kill-{kills}")

    async def fault(faults: Faults) -> None:
        for _ in range(kills):
            await kill_and_restart_worker(system, faults)

    result = await chaos_drop(system, f"1. worker SIGKILL x{kills} mid-drop, restarted", fault)
    assert result.faults == ["worker SIGKILL"] * kills


@pytest.mark.slow
async def test_relay_sigkilled_twice(chaos: Chaos) -> None:
    system, _ = await chaos.start("relay-kill")

    async def fault(faults: Faults) -> None:
        for _ in range(2):
            await kill_and_restart_relay(faults)

    async def kill_and_restart_relay(faults: Faults) -> None:
        held = system.log_of("relay").count("holding the relay lock")
        assert system.stop("relay", signal.SIGKILL) == -signal.SIGKILL
        faults.note("relay SIGKILL")
        system.start("relay")

        async def holding() -> int:
            return system.log_of("relay").count("holding the relay lock")

        await eventually(holding, lambda n: n > held, timeout=30, what="the restarted relay taking the lock")

    await chaos_drop(system, "2. relay SIGKILL x2 mid-drop, restarted", fault)


@pytest.mark.slow
async def test_two_workers_in_one_group_one_killed_its_partitions_move(chaos: Chaos) -> None:
    system, _ = await chaos.start("two-workers")
    survivor_assignments = system.worker_assignments()
    system.start("worker", name="worker2")
    await system.wait_worker_assigned(name="worker2")
    # The rebalance that let worker2 in gave the first worker its share again.
    await system.wait_worker_assigned(times=survivor_assignments + 1)

    async def fault(faults: Faults) -> None:
        before = system.worker_assignments()
        assert system.stop("worker2", signal.SIGKILL) == -signal.SIGKILL
        faults.note("worker2 of 2 SIGKILL (not restarted)")
        await system.wait_worker_assigned(times=before + 1)

    await chaos_drop(system, "6. two workers, one SIGKILLed: partitions move", fault)
    last = system.log_of("worker").rsplit("assigned partitions:", 1)[1].splitlines()[0]
    assert last.count("[") == 3, last  # the survivor owns all three partitions


@pytest.mark.slow
async def test_sigterm_under_load_every_role_exits_0_within_its_bound(chaos: Chaos) -> None:
    """SIGTERM mid-drop: the worker and relay finish or hand back their batch and exit 0 promptly; an API
    draining answers what it took in (with the envelope) and refuses new connections; nothing accepted is lost."""
    system, _ = await chaos.start("sigterm")
    second_api = await system.start_second_api()
    exits: dict[str, tuple[int, float]] = {}

    def terminate(name: str) -> None:
        started = time.monotonic()
        exits[name] = (system.stop(name, signal.SIGTERM), time.monotonic() - started)

    async def burst_then_stop_api(coupon_id: int, faults: Faults) -> list[tuple[int, str | None]]:
        """Requests racing an API's SIGTERM: each either completes with an envelope or never connects."""
        results: list[tuple[int, str | None]] = []
        async with httpx.AsyncClient(base_url=second_api, timeout=30) as client:

            async def one(user: int) -> None:
                try:
                    response = await client.post(f"/api/v1/users/{user}/coupons/publish", json={"couponId": coupon_id})
                except httpx.TransportError:
                    # No answer: refused, or an idle keep-alive connection closed by the draining server
                    # as the request went out. The client retries (on another API process).
                    results.append((0, None))
                    return
                body = response.json()
                assert body["code"] == response.status_code
                results.append((response.status_code, (body["data"] or {}).get("requestId")))

            tasks = [asyncio.create_task(one(900_000 + n)) for n in range(300)]
            await eventually(lambda: asyncio.sleep(0, len(results)), lambda n: n >= 30, timeout=30)
            faults.note("api SIGTERM")
            await asyncio.to_thread(terminate, "api2")
            await asyncio.gather(*tasks)
        return results

    api_answers: list[tuple[int, str | None]] = []

    async def fault(faults: Faults) -> None:
        faults.note("worker SIGTERM")
        await asyncio.to_thread(terminate, "worker")
        assigned = system.worker_assignments()
        system.start("worker")
        await system.wait_worker_assigned(times=assigned + 1)
        faults.note("relay SIGTERM")
        await asyncio.to_thread(terminate, "relay")
        system.start("relay")
        conn = await system.db()
        try:
            coupon_id = await conn.fetchval("SELECT max(id) FROM coupons")
        finally:
            await conn.close()
        api_answers.extend(await burst_then_stop_api(coupon_id, faults))

    result = await chaos_drop(system, "SIGTERM under load: worker, relay, API", fault, record=False)
    for name, (code, took) in exits.items():
        assert code == 0, (name, code, system.log_of(name)[-2000:])
        assert took < 15, (name, took)
    result.notes["exit after SIGTERM (code, seconds)"] = {k: (c, round(t, 1)) for k, (c, t) in exits.items()}
    accepted = [rid for status, rid in api_answers if status == 200]
    assert all(status in (0, 200, 409, 503) for status, _ in api_answers), api_answers
    conn = await system.db()
    try:
        issued = await conn.fetchval(
            "SELECT count(*) FROM coupon_requests WHERE request_id = ANY($1::text[]) AND status = 'ISSUED'", accepted
        )
    finally:
        await conn.close()
    assert issued == len(accepted)  # what the draining API accepted is issued
    result.notes["api drained: answered / refused connection"] = (
        sum(s != 0 for s, _ in api_answers),
        sum(s == 0 for s, _ in api_answers),
    )
    result.record()
