"""When, in a drop, a fault strikes: timed by what the clients were told, not by a share of the answers.

- ``claiming``: once a seeded-random share (10-60%) of the quantity has been told 200;
- ``sellout``: once told 200 reaches the quantity (or a SOLD_OUT comes back);
- ``refusing``: after the sell-out, once a seeded-random number (100-500) of SOLD_OUT/ALREADY_REQUESTED came in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

from tests.chaos.drop import Progress


class Phase(StrEnum):
    CLAIMING = "claiming"
    SELLOUT = "sellout"
    REFUSING = "refusing"


PHASES = tuple(Phase)


@dataclass(frozen=True, slots=True)
class Trigger:
    """When, in the drop, the fault strikes."""

    phase: Phase
    quantity: int
    told_ok_at_least: int = 0  # claiming
    refused_after_sold_out: int = 0  # refusing

    @classmethod
    def draw(cls, phase: Phase, quantity: int, rng: random.Random) -> Trigger:
        if phase is Phase.CLAIMING:
            return cls(phase, quantity, told_ok_at_least=max(1, math.ceil(quantity * rng.uniform(0.10, 0.60))))
        if phase is Phase.REFUSING:
            return cls(phase, quantity, refused_after_sold_out=rng.randint(100, 500))
        return cls(phase, quantity)

    def fired(self, progress: Progress) -> bool:
        if self.phase is Phase.CLAIMING:
            return progress.told_ok >= self.told_ok_at_least
        if self.phase is Phase.SELLOUT:
            return progress.sold_out
        return (progress.refused_since_sold_out or 0) >= self.refused_after_sold_out

    def describe(self) -> str:
        if self.phase is Phase.CLAIMING:
            share = self.told_ok_at_least / self.quantity
            return f"claiming: {self.told_ok_at_least} of {self.quantity} told 200 ({share:.0%})"
        if self.phase is Phase.SELLOUT:
            return f"sellout: told 200 reached {self.quantity} (or a SOLD_OUT came back)"
        return f"refusing: {self.refused_after_sold_out} refusals after the sell-out"
