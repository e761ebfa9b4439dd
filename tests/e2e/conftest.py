from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.system import RunningSystem, start_system, stop_system


@pytest.fixture(scope="session")
def e2e_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="module")
async def system(e2e_logs: Path) -> AsyncIterator[RunningSystem]:
    running = await start_system("main", e2e_logs, db_name="couponrush_e2e", redis_db=14)
    yield running
    codes = stop_system(running)
    # Every role shuts down cleanly on SIGTERM: finishes, commits, exits 0.
    assert codes == {"relay": 0, "worker": 0, "api": 0}, (codes, running.log_of("worker")[-3000:])
