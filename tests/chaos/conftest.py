from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.chaos.harness import Chaos


@pytest.fixture(scope="session")
def chaos_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chaos-logs")


@pytest.fixture
async def chaos(chaos_logs: Path) -> AsyncIterator[Chaos]:
    harness = Chaos(chaos_logs)
    yield harness
    codes = harness.stop_all()
    # After the faults, every role still shuts down cleanly on SIGTERM: finishes, commits, exits 0.
    assert set(codes.values()) <= {0}, codes
