"""The report's Kafka design, rebuilt from the product's public pieces for the benchmark to measure.

- API (``python -m couponrush_bench.report api``): the product's app, with the flag-only gate
  (``coupon:available:{id}``, nothing reserved) and one transaction per accepted request.
- worker (``python -m couponrush_bench.report worker``): one record, one issuing transaction, one offset
  commit, then the next.
- relay: the product's own (``couponrush relay``): it serves both designs.
"""

from __future__ import annotations

import sys


def commands() -> dict[str, list[str]]:
    """The processes that run the report's roles in place of couponrush's (for ``harness.System``)."""
    return {role: [sys.executable, "-m", "couponrush_bench.report", role] for role in ("api", "worker")}
