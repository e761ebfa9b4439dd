"""The benchmark's arithmetic: percentiles, and the invariants it reports after a drop."""

from __future__ import annotations

from collections import Counter

import pytest

from couponrush_bench.invariants import Settled, drop_checks
from couponrush_bench.loadgen import LoadRun, Result
from couponrush_bench.measure import percentile


@pytest.mark.parametrize(("q", "expected"), [(50, 50.0), (95, 95.0), (99, 99.0), (100, 100.0), (0, 1.0)])
def test_percentiles_are_nearest_rank(q: float, expected: float) -> None:
    assert percentile([float(n) for n in range(100, 0, -1)], q) == expected


def test_no_values_have_a_zero_percentile() -> None:
    assert percentile([], 99) == 0.0


def run_of(*answers: tuple[int, int]) -> LoadRun:
    return LoadRun(results=[Result(user, 0.0, 0.001, status, None) for user, status in answers])


def outcome(*users: int) -> Settled:
    return Settled(list(users), len(users), Counter(), {}, [0.01] * len(users), [])


def test_a_clean_drop_passes_every_invariant() -> None:
    checks = drop_checks(run_of((1, 200), (2, 200), (3, 409), (1, 409)).results, outcome(1, 2), 2, reserving=True)
    assert checks["issued_equals_quantity_when_demand_exceeds_it"] is True
    assert checks["told_ok_equals_issued"] is True
    assert checks["over_accepted"] == 0


def test_over_acceptance_and_duplicates_are_reported_not_hidden() -> None:
    checks = drop_checks(run_of((1, 200), (2, 200), (3, 200)).results, outcome(1, 1), 2, reserving=True)
    assert checks["no_duplicates"] is False
    assert checks["over_accepted"] == 1
    assert checks["told_ok_equals_issued"] is False


def test_a_drop_that_issued_less_than_demand_allowed_fails() -> None:
    checks = drop_checks(run_of((1, 200), (2, 200), (3, 200)).results, outcome(1), 2, reserving=False)
    assert checks["issued_equals_quantity_when_demand_exceeds_it"] is False
    assert "told_ok_equals_issued" not in checks
