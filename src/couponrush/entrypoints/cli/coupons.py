"""Operator commands: ``couponrush coupons create|list|show|close|open``.

They talk to PostgreSQL and Redis through the same service layer as the API (``CouponAdmin`` keeps the
gate in step), so a coupon made here opens at once. Output is a Rich table, or JSON with ``--json``.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from couponrush.config import Settings
from couponrush.domain.model import Coupon, CouponStatus, NewCoupon
from couponrush.entrypoints.cli.common import run, setup
from couponrush.service.ports import CouponProgress

coupons_app = typer.Typer(help="Create, list, show, close and open coupons.", no_args_is_help=True)
# Piped output is not squeezed to 80 columns (tables would wrap names mid-word).
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter("use a number and a unit: 90s, 30m, 2h, 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def coupon_json(coupon: Coupon) -> dict[str, Any]:
    return {
        "id": coupon.id,
        "name": coupon.name,
        "discountRate": float(coupon.discount_rate),
        "quantity": coupon.quantity,
        "issuedCount": coupon.issued_count,
        "remainingQuantity": coupon.remaining_quantity,
        "status": coupon.status.value,
        "expiredAt": coupon.expired_at.isoformat(),
    }


def _coupons_table(coupons: list[Coupon]) -> Table:
    table = Table("id", "name", "rate", "quantity", "issued", "remaining", "status", "expires at")
    for c in coupons:
        table.add_row(
            str(c.id),
            c.name,
            f"{c.discount_rate:f}",
            str(c.quantity),
            str(c.issued_count),
            str(c.remaining_quantity),
            c.status.value,
            c.expired_at.isoformat(timespec="seconds"),
        )
    return table


def _print_coupons(coupons: list[Coupon], as_json: bool) -> None:
    if as_json:
        print(json.dumps([coupon_json(c) for c in coupons]))
    else:
        out.print(_coupons_table(coupons))


def _setup(role: str) -> Settings:
    return setup(role, to_stderr=True)


def _unknown(coupon_id: int) -> typer.Exit:
    err.print(f"[red]coupon {coupon_id} does not exist[/red]")
    return typer.Exit(1)


@coupons_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="1-200 characters")],
    quantity: Annotated[int, typer.Option(help="how many exist (> 0)")],
    discount_rate: Annotated[str, typer.Option(help="0 < rate <= 1, up to 4 decimals")] = "0.1",
    expires_at: Annotated[str | None, typer.Option(help="ISO-8601 with offset, e.g. 2030-01-01T00:00:00+09:00")] = None,
    expires_in: Annotated[str | None, typer.Option(help="or a duration from now: 90s, 30m, 2h, 7d")] = None,
    closed: Annotated[bool, typer.Option("--closed", help="create it UNPUBLISHABLE (open it later)")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a coupon; unless --closed it opens at once."""
    from couponrush.entrypoints.api.schemas import CouponCreate

    if (expires_at is None) == (expires_in is None):
        raise typer.BadParameter("give exactly one of --expires-at or --expires-in")
    expiry: Any = expires_at if expires_at is not None else datetime.now(UTC) + parse_duration(str(expires_in))
    try:
        # The API's own validation rules, so the CLI accepts exactly what the API would.
        body = CouponCreate.model_validate(
            {
                "name": name,
                "discountRate": Decimal(discount_rate),
                "quantity": quantity,
                "status": CouponStatus.UNPUBLISHABLE if closed else CouponStatus.PUBLISHABLE,
                "expiredAt": expiry,
            }
        )
    except (ValidationError, ArithmeticError) as exc:
        err.print(f"[red]invalid coupon:[/red] {exc}")
        raise typer.Exit(2) from exc
    new = NewCoupon(
        name=body.name,
        discount_rate=body.discount_rate,
        quantity=body.quantity,
        status=body.status,
        expired_at=body.expired_at,
    )
    settings = _setup("coupons")
    coupon = run(settings, _create(settings, new))
    _print_coupons([coupon], as_json)


async def _create(settings: Settings, new: NewCoupon) -> Coupon:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        return await services.coupon_admin().create(new)


@coupons_app.command("list")
def list_coupons(
    limit: Annotated[int, typer.Option(min=1, help="newest first, at most this many")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List coupons, newest first."""
    settings = _setup("coupons")
    _print_coupons(run(settings, _list(settings, limit)), as_json)


async def _list(settings: Settings, limit: int) -> list[Coupon]:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        return await services.operations().list_coupons(limit)


@coupons_app.command("show")
def show(coupon_id: Annotated[int, typer.Argument(min=1)], as_json: JsonOption = False) -> None:
    """One coupon, with its pending requests."""
    settings = _setup("coupons")
    found = run(settings, _show(settings, coupon_id))
    if found is None:
        raise _unknown(coupon_id)
    coupon, progress = found
    if as_json:
        print(json.dumps({**coupon_json(coupon), "pending": progress.pending if progress else 0}))
        return
    out.print(_coupons_table([coupon]))
    if progress is not None:
        out.print(f"pending requests: {progress.pending} (in the outbox: {progress.unsent})")


async def _show(settings: Settings, coupon_id: int) -> tuple[Coupon, CouponProgress | None] | None:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        coupon = await services.coupons.get(coupon_id)
        if coupon is None:
            return None
        return coupon, await services.operations().coupon_progress(coupon_id)


def _set_status(coupon_id: int, status: CouponStatus, as_json: bool) -> None:
    settings = _setup("coupons")
    coupon = run(settings, _status(settings, coupon_id, status))
    if coupon is None:
        raise _unknown(coupon_id)
    _print_coupons([coupon], as_json)


async def _status(settings: Settings, coupon_id: int, status: CouponStatus) -> Coupon | None:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        return await services.coupon_admin().set_status(coupon_id, status)


@coupons_app.command("close")
def close(coupon_id: Annotated[int, typer.Argument(min=1)], as_json: JsonOption = False) -> None:
    """Close a coupon (UNPUBLISHABLE): the gate refuses at once."""
    _set_status(coupon_id, CouponStatus.UNPUBLISHABLE, as_json)


@coupons_app.command("open")
def open_(coupon_id: Annotated[int, typer.Argument(min=1)], as_json: JsonOption = False) -> None:
    """Reopen a coupon (PUBLISHABLE): the gate admits again."""
    _set_status(coupon_id, CouponStatus.PUBLISHABLE, as_json)
