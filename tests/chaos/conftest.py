from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from couponrush_bench.harness import Sandbox
from tests.chaos.harness import Chaos


@pytest.fixture
async def chaos(sandbox: Sandbox) -> AsyncIterator[Chaos]:
    harness = Chaos(sandbox)
    yield harness
    codes = await harness.stop_all()
    # After the faults, every role still shuts down cleanly on SIGTERM: finishes, commits, exits 0.
    assert set(codes.values()) <= {0}, codes
