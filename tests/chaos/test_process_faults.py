"""Beyond the matrix (one run each, while units are being claimed, with `make chaos`): a worker SIGKILLed three
times in a row, two workers losing one, and SIGTERM under load for every role."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from couponrush.config import PUBLISH_REQUESTED_TOPIC
from couponrush_bench.harness import kafka_partition
from couponrush_bench.polling import eventually
from tests.chaos.faults import restart_worker
from tests.chaos.harness import Chaos, Phase, Stage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


async def test_worker_sigkilled_three_times_mid_batch(chaos: Chaos) -> None:
    async def fault(stage: Stage) -> None:
        # Each kill right after the restarted worker was assigned its partitions: mid-batch of the backlog.
        for _ in range(3):
            await restart_worker(stage)

    result, _ = await chaos.run("worker SIGKILL x3 in a row, restarted", Phase.CLAIMING, fault, name="worker-kill-3")
    assert result.faults == ["worker SIGKILL"] * 3


async def test_two_workers_in_one_group_the_one_issuing_killed_its_partitions_move(chaos: Chaos) -> None:
    survivors: list[str] = []

    async def second_worker(stage: Stage) -> None:
        system = stage.system
        survivor_assignments = system.worker_assignments()
        system.start("worker", name="worker2")
        await system.wait_worker_assigned(name="worker2")
        # The rebalance that let worker2 in gave the first worker its share again.
        await system.wait_worker_assigned(times=survivor_assignments + 1)

    async def fault(stage: Stage) -> None:
        # The worker holding the coupon's partition (a drop is keyed by its coupon) dies, mid-claiming.
        system = stage.system
        partition = f"{PUBLISH_REQUESTED_TOPIC}[{kafka_partition(str(stage.coupon_id), 3)}]"
        [victim] = [w for w in ("worker", "worker2") if partition in system.last_assignment(w)]
        [survivor] = [w for w in ("worker", "worker2") if w != victim]
        survivors.append(survivor)
        before = system.worker_assignments(survivor)
        await asyncio.to_thread(stage.sigkill, victim)
        stage.faults.note(f"the worker issuing ({victim}, 1 of 2) SIGKILL, not restarted")
        stage.faults.repaired()  # nothing to restart: the survivor takes its partitions
        await system.wait_worker_assigned(times=before + 1, name=survivor)

    _, stage = await chaos.run(
        "two workers, the issuing one SIGKILLed: partitions move",
        Phase.CLAIMING,
        fault,
        name="two-workers",
        prepare=second_worker,
    )
    assert len(stage.system.last_assignment(survivors[0])) == 3  # the survivor owns all three partitions


async def test_sigterm_under_load_every_role_exits_0_within_its_bound(chaos: Chaos) -> None:
    """SIGTERM mid-drop: the worker and relay finish or hand back their batch and exit 0 promptly; an API
    draining answers what it took in (with the envelope) and refuses new connections; nothing accepted is lost."""
    exits: dict[str, tuple[int, float]] = {}
    api_answers: list[tuple[int, str | None]] = []
    second_api: list[str] = []

    async def prepare(stage: Stage) -> None:
        second_api.append(await stage.system.start_second_api())

    def terminate(stage: Stage, name: str) -> None:
        started = time.monotonic()
        exits[name] = (stage.system.stop(name, signal.SIGTERM), time.monotonic() - started)

    async def burst_then_stop_api(stage: Stage) -> None:
        """Requests racing an API's SIGTERM: each either completes with an envelope or never connects."""
        async with httpx.AsyncClient(base_url=second_api[0], timeout=30) as client:

            async def one(user: int) -> None:
                try:
                    response = await client.post(
                        f"/api/v1/users/{user}/coupons/publish", json={"couponId": stage.coupon_id}
                    )
                except httpx.TransportError:
                    # No answer: refused, or an idle keep-alive connection closed by the draining server
                    # as the request went out. The client retries (on another API process).
                    api_answers.append((0, None))
                    return
                body = response.json()
                assert body["code"] == response.status_code
                api_answers.append((response.status_code, (body["data"] or {}).get("requestId")))

            tasks = [asyncio.create_task(one(900_000 + n)) for n in range(300)]
            await eventually(lambda: asyncio.sleep(0, len(api_answers)), lambda n: n >= 30, timeout=30)
            stage.faults.note("api SIGTERM")
            await asyncio.to_thread(terminate, stage, "api2")
            await asyncio.gather(*tasks)

    async def fault(stage: Stage) -> None:
        system = stage.system
        stage.faults.note("worker SIGTERM")
        await asyncio.to_thread(terminate, stage, "worker")
        assigned = system.worker_assignments()
        system.start("worker")
        await system.wait_worker_assigned(times=assigned + 1)
        stage.faults.note("relay SIGTERM")
        await asyncio.to_thread(terminate, stage, "relay")
        system.start("relay")
        await burst_then_stop_api(stage)
        stage.faults.repaired()

    result, stage = await chaos.run(
        "SIGTERM under load: worker, relay, API", Phase.CLAIMING, fault, name="sigterm", prepare=prepare, record=False
    )
    for name, (code, took) in exits.items():
        assert code == 0, (name, code, stage.system.log_of(name)[-2000:])
        assert took < 15, (name, took)
    result.notes["exit after SIGTERM (code, seconds)"] = {k: (c, round(t, 1)) for k, (c, t) in exits.items()}
    accepted = [rid for status, rid in api_answers if status == 200]
    assert all(status in (0, 200, 409, 503) for status, _ in api_answers), api_answers
    conn = await stage.system.db()
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
