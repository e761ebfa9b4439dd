"""Every fault in every phase of a drop: claiming, sell-out, refusing (tests/chaos/harness.py says when each
strikes). ``COUPONRUSH_CHAOS_RUNS`` runs of each (3 by default), each with a seed of its own.

The default suite runs one of them (a worker SIGKILLed while units are being claimed); `make chaos` runs all.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.faults import SCENARIOS, Scenario
from tests.chaos.harness import PHASES, Chaos, Phase

RUNS = int(os.environ.get("COUPONRUSH_CHAOS_RUNS", "3"))
QUICK = ("worker-kill", Phase.CLAIMING, 1)


def cases() -> list[object]:
    return [
        pytest.param(
            scenario,
            phase,
            id=f"{scenario.key}-{phase}-run{run}",
            marks=() if (scenario.key, phase, run) == QUICK else (pytest.mark.slow,),
        )
        for scenario in SCENARIOS
        for phase in PHASES
        for run in range(1, RUNS + 1)
    ]


@pytest.mark.timeout(360)
@pytest.mark.parametrize(("scenario", "phase"), cases())
async def test_fault_in_phase(chaos: Chaos, scenario: Scenario, phase: Phase) -> None:
    await chaos.run(
        scenario.title,
        phase,
        scenario.inject,
        name=f"{scenario.key}-{phase}",
        apis=scenario.apis,
        verify=scenario.verify,
    )
