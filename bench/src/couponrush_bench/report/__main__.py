"""``python -m couponrush_bench.report api [--workers N] | worker``: a role of the report's design, configured
from the same ``COUPONRUSH_*`` environment as couponrush's own roles."""

from __future__ import annotations

import argparse
import asyncio
import logging

from couponrush.config import load_settings
from couponrush.observability.logging import configure_logging

log = logging.getLogger("couponrush_bench.report")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m couponrush_bench.report", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    api = roles.add_parser("api", help="the HTTP API with the flag gate and one transaction per request")
    api.add_argument("--workers", type=int, default=1, help="HTTP worker processes")
    roles.add_parser("worker", help="one record, one transaction, one offset commit")
    args = parser.parse_args(argv)
    if args.role == "api":
        from couponrush_bench.report.api import serve

        serve(args.workers)
        return
    from couponrush_bench.report.worker import run_worker

    settings = load_settings()
    configure_logging(settings.log_level, "worker", settings.log_format)
    asyncio.run(run_worker(settings))
    log.info("worker stopped")


if __name__ == "__main__":
    main()
