from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from couponrush_bench.harness import Sandbox
from couponrush_bench.servers import OwnPostgres, ScratchDatabases, run_prefix
from tests.chaos.harness import Chaos, draw_seed
from tests.support.fixtures import TEST_DB_PREFIX

# (test id, seed, outcome) of every chaos run of the session, for the summary at the end.
_SEEDS: list[tuple[str, int, str]] = []


@pytest.fixture(scope="session")
def chaos_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL cluster of the suite's own (initdb into a temporary directory, a free port): the
    PostgreSQL scenario restarts it, and no cluster anyone else uses is ever touched."""
    cluster = OwnPostgres()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
async def chaos_sandbox(chaos_postgres: OwnPostgres, e2e_logs: Path) -> AsyncIterator[Sandbox]:
    box = Sandbox(ScratchDatabases(chaos_postgres.url, run_prefix(TEST_DB_PREFIX)), log_dir=e2e_logs / "chaos")
    yield box
    await box.close()


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    seed = draw_seed(os.environ.get("COUPONRUSH_CHAOS_SEED"))
    request.node.user_properties.append(("chaos_seed", seed))
    print(f"chaos seed {seed}: replay with COUPONRUSH_CHAOS_SEED={seed} pytest -m chaos '{request.node.nodeid}'")
    return seed


@pytest.fixture
async def chaos(
    chaos_sandbox: Sandbox, chaos_postgres: OwnPostgres, chaos_seed: int, request: pytest.FixtureRequest
) -> AsyncIterator[Chaos]:
    harness = Chaos(chaos_sandbox, chaos_postgres, chaos_seed, request.node.nodeid)
    yield harness
    codes = await harness.stop_all()
    # After the faults, every role still shuts down cleanly on SIGTERM: finishes, commits, exits 0.
    assert set(codes.values()) <= {0}, codes


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    seed = dict(item.user_properties).get("chaos_seed")
    if seed is not None and (report.when == "call" or (report.when == "setup" and report.failed)):
        _SEEDS.append((item.nodeid, int(str(seed)), report.outcome))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SEEDS:
        return
    terminalreporter.section("chaos seeds (replay one: COUPONRUSH_CHAOS_SEED=<seed> pytest -m chaos '<test id>')")
    for nodeid, seed, outcome in _SEEDS:
        terminalreporter.write_line(f"{seed:>10}  {outcome:<7} {nodeid}")
