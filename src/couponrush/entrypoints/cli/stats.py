"""``couponrush stats ID``: live numbers of one coupon's drop, refreshed until Ctrl-C (or --once, --json)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from couponrush.config import Settings
from couponrush.entrypoints.cli.common import run, setup
from couponrush.entrypoints.cli.coupons import err, out
from couponrush.service.ports import CouponProgress


@dataclass(frozen=True, slots=True)
class StatsLine:
    """One refresh of ``couponrush stats``."""

    coupon_id: int
    quantity: int
    issued: int
    stock: int  # not yet issued
    pending: int  # accepted, not yet decided
    in_outbox: int  # of the pending: not yet on Kafka
    lag: int  # of the pending: on Kafka, not yet decided by a worker
    issued_per_s: float

    def as_json(self) -> dict[str, Any]:
        return {
            "couponId": self.coupon_id,
            "quantity": self.quantity,
            "issued": self.issued,
            "stock": self.stock,
            "pending": self.pending,
            "inOutbox": self.in_outbox,
            "lag": self.lag,
            "issuedPerSecond": round(self.issued_per_s, 1),
        }


def stats_line(progress: CouponProgress, previous: tuple[int, float] | None, now: float) -> StatsLine:
    """Pure: a refresh from the database's numbers and the previous (issued, time), if any."""
    rate = 0.0
    if previous is not None and now > previous[1]:
        rate = max(0, progress.issued - previous[0]) / (now - previous[1])
    return StatsLine(
        coupon_id=progress.coupon_id,
        quantity=progress.quantity,
        issued=progress.issued,
        stock=progress.quantity - progress.issued,
        pending=progress.pending,
        in_outbox=progress.unsent,
        lag=max(0, progress.pending - progress.unsent),
        issued_per_s=rate,
    )


def _stats_table(line: StatsLine) -> Table:
    table = Table(title=f"coupon {line.coupon_id}", show_header=True)
    for column in ("stock", "issued", "pending", "in outbox", "lag (on Kafka)", "issued/s"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{line.stock}/{line.quantity}",
        str(line.issued),
        str(line.pending),
        str(line.in_outbox),
        str(line.lag),
        f"{line.issued_per_s:.1f}",
    )
    return table


def stats(
    coupon_id: Annotated[int, typer.Argument(min=1)],
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 1.0,
    iterations: Annotated[int, typer.Option(min=0, help="stop after this many refreshes (0: until Ctrl-C)")] = 0,
    once: Annotated[bool, typer.Option("--once", help="one refresh, then exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON line per refresh")] = False,
) -> None:
    """Live numbers of one coupon's drop: stock, pending, issued/s, lag. Refreshes until Ctrl-C."""
    settings = setup("stats", to_stderr=True)
    try:
        found = run(settings, _stats(settings, coupon_id, interval, 1 if once else iterations, as_json))
    except KeyboardInterrupt:
        found = True
    if not found:
        err.print(f"[red]coupon {coupon_id} does not exist[/red]")
        raise typer.Exit(1)


async def _stats(settings: Settings, coupon_id: int, interval: float, iterations: int, as_json: bool) -> bool:
    from couponrush.bootstrap import open_services

    live = not as_json and sys.stdout.isatty()
    async with open_services(settings) as services:
        operations = services.operations()
        previous: tuple[int, float] | None = None
        count = 0
        display: Live | None = None
        try:
            while True:
                progress = await operations.coupon_progress(coupon_id)
                if progress is None:
                    return False
                now = time.monotonic()
                line = stats_line(progress, previous, now)
                previous = (progress.issued, now)
                if as_json:
                    print(json.dumps(line.as_json()), flush=True)
                elif live:
                    if display is None:
                        display = Live(_stats_table(line), console=out, auto_refresh=False)
                        display.start()
                    display.update(_stats_table(line), refresh=True)
                else:
                    out.print(_stats_table(line))
                count += 1
                if iterations and count >= iterations:
                    return True
                await asyncio.sleep(interval)  # the refresh period itself, not a wait on a condition
        finally:
            if display is not None:
                display.stop()
