"""One chaos run's parts: what a fault acts on (``Stage``), what it did and when (``Faults``), and what the run
found (``ChaosResult``, appended to ``.couponrush/chaos-results.jsonl``)."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from couponrush_bench.harness import System
from couponrush_bench.polling import eventually
from couponrush_bench.servers import OwnPostgres, OwnRedis
from tests.chaos.drop import Progress

RESULTS = Path(
    os.environ.get("COUPONRUSH_CHAOS_RESULTS")
    or Path(__file__).resolve().parents[2] / ".couponrush" / "chaos-results.jsonl"
)
# One pytest session: the table is made from one session's runs unless told otherwise.
SESSION = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"


@dataclass
class Faults:
    """What was injected, when the first fault struck, and when the last one was repaired."""

    injected: list[str] = field(default_factory=list)
    first_at: float | None = None  # monotonic
    first_wall: float | None = None  # epoch seconds, to compare with the database's timestamps
    repaired_at: float | None = None
    repaired_wall: float | None = None

    def note(self, what: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
            self.first_wall = time.time()
        self.injected.append(what)

    def repaired(self) -> None:
        """The fault is over (the process restarted, the broker back): the 60 s bound counts from here."""
        self.repaired_at = time.monotonic()
        self.repaired_wall = time.time()


@dataclass
class Stage:
    """What a fault acts on, and the drop it strikes."""

    system: System
    redis: OwnRedis
    postgres: OwnPostgres
    api_urls: list[str]
    faults: Faults
    rng: random.Random
    progress: Progress
    coupon_id: int = 0
    # What the fault saw (recorded with the result).
    notes: dict[str, Any] = field(default_factory=dict)

    async def answers_while_down(self, count: int, *, accepted: int = 0, timeout: float = 60) -> tuple[int, int]:
        """Wait until ``count`` more requests were answered, ``accepted`` of them with 200, or the drop ended:
        the crowd felt the fault. How many were answered, and accepted, meanwhile."""
        answers, told_ok = len(self.progress.answers), self.progress.told_ok

        async def since() -> tuple[int, int, bool]:
            progress = self.progress
            return len(progress.answers) - answers, progress.told_ok - told_ok, progress.finished

        got = await eventually(
            since,
            lambda s: (s[0] >= count and s[1] >= accepted) or s[2],
            timeout=timeout,
            what=f"{count} answers ({accepted} accepted) during the fault",
        )
        return got[0], got[1]

    def sigkill(self, name: str) -> None:
        code = self.system.stop(name, signal.SIGKILL)
        assert code == -signal.SIGKILL, (name, code)


Inject = Callable[[Stage], Coroutine[Any, Any, None]]


@dataclass
class ChaosResult:
    scenario: str
    phase: str
    seed: int
    test: str
    requests: int
    users: int
    quantity: int
    trigger: str
    faults: list[str]
    answers: dict[str, int]
    told_ok: int
    issued: int
    invariants: dict[str, bool]
    # The longest an accepted request waited for its decision, counted from the fault's repair (or from
    # its acceptance, if later): what "decided within 60 s of the repair" bounds. None: some never were.
    recovery_s: float | None
    # From the first fault until it was repaired (process restarted, broker back...).
    outage_s: float
    # A fresh request for a fresh coupon after the run: first attempt -> ISSUED (None: not within 30 s).
    fresh_issued_s: float | None
    # From the first fault until every accepted request of the drop was decided.
    settled_s: float
    # From the first fault until the first request accepted after it (None: none was, e.g. sold out).
    admitting_again_s: float | None
    # First request sent -> last answer.
    drop_s: float
    at_answer: int  # how many answers were in when the fault struck
    session: str = SESSION
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        return [name for name, held in self.invariants.items() if not held]

    def record(self) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **asdict(self)}) + "\n")
