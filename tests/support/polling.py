"""Wait for a condition with a deadline: the harness's ``eventually``, for the tests that import it from here."""

from __future__ import annotations

from couponrush_bench.polling import eventually

__all__ = ["eventually"]
