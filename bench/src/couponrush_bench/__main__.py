"""``python -m couponrush_bench``: the ``couponrush-bench`` command."""

from couponrush_bench.cli import main

main()
