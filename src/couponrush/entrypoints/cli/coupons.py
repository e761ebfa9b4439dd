"""Operator commands: ``couponrush coupons create|list|show|update|close|open``.

They talk to PostgreSQL and Redis through the same service layer as the API (``CouponAdmin`` keeps the
gate in step), so a coupon made here opens at once. Output is a Rich table, or JSON with ``--json``.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from couponrush.config import Settings
from couponrush.domain.model import CouponState, CouponStatus, InvalidField, NewCoupon
from couponrush.entrypoints.cli.common import run, setup
from couponrush.service.coupon_admin import ChangeRefused, CouponEdit
from couponrush.service.ports import CouponProgress, CouponSummary

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


def coupon_json(summary: CouponSummary) -> dict[str, Any]:
    """The same fields as the API's coupon (GET /api/v1/coupons/{id})."""
    coupon = summary.coupon
    return {
        "id": coupon.id,
        "name": coupon.name,
        "discountRate": float(coupon.discount_rate),
        "quantity": coupon.quantity,
        "issuedCount": coupon.issued_count,
        "remainingQuantity": coupon.remaining_quantity,
        "status": coupon.status.value,
        "expiredAt": coupon.expired_at.isoformat(),
        "opensAt": None if coupon.opens_at is None else coupon.opens_at.isoformat(),
        "state": summary.state.value,
        "pendingCount": summary.pending,
        "availableQuantity": summary.available,
    }


def _moment(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


def _coupons_table(summaries: list[CouponSummary]) -> Table:
    table = Table(
        "id", "name", "rate", "quantity", "issued", "pending", "available", "state", "status", "opens at", "expires at"
    )
    for s in summaries:
        c = s.coupon
        table.add_row(
            str(c.id),
            c.name,
            f"{c.discount_rate:f}",
            str(c.quantity),
            str(c.issued_count),
            str(s.pending),
            str(s.available),
            s.state.value,
            c.status.value,
            _moment(c.opens_at),
            _moment(c.expired_at),
        )
    return table


def _print_coupons(summaries: list[CouponSummary], as_json: bool) -> None:
    if as_json:
        print(json.dumps([coupon_json(s) for s in summaries]))
    else:
        out.print(_coupons_table(summaries))


def _actor() -> str:
    """Who changes a coupon from the CLI, for the change record."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _when(at: str | None, within: str | None, at_flag: str, in_flag: str) -> Any:
    """An instant given as ISO-8601 (``--x-at``) or as a duration from now (``--x-in``); None if neither."""
    if at is not None and within is not None:
        raise typer.BadParameter(f"give at most one of {at_flag} or {in_flag}")
    if within is not None:
        return datetime.now(UTC) + parse_duration(within)
    return at


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
    opens_at: Annotated[
        str | None, typer.Option(help="admit from this instant (ISO-8601 with offset), by the gate's clock")
    ] = None,
    opens_in: Annotated[str | None, typer.Option(help="or a duration from now: 10m")] = None,
    closed: Annotated[bool, typer.Option("--closed", help="create it UNPUBLISHABLE (open it later)")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a coupon; unless --closed it opens at once, or at --opens-at / --opens-in."""
    from couponrush.entrypoints.api.schemas import CouponCreate

    if (expires_at is None) == (expires_in is None):
        raise typer.BadParameter("give exactly one of --expires-at or --expires-in")
    expiry = _when(expires_at, expires_in, "--expires-at", "--expires-in")
    opening = _when(opens_at, opens_in, "--opens-at", "--opens-in")
    try:
        # The API's own validation rules, so the CLI accepts exactly what the API would.
        body = CouponCreate.model_validate(
            {
                "name": name,
                "discountRate": Decimal(discount_rate),
                "quantity": quantity,
                "status": CouponStatus.UNPUBLISHABLE if closed else CouponStatus.PUBLISHABLE,
                "expiredAt": expiry,
                "opensAt": opening,
            }
        )
        new = NewCoupon(
            name=body.name,
            discount_rate=body.discount_rate,
            quantity=body.quantity,
            status=body.status,
            expired_at=body.expired_at,
            opens_at=body.opens_at,
        )
    except (ValidationError, ArithmeticError, InvalidField) as exc:
        err.print(f"[red]invalid coupon:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings = _setup("coupons")
    summary = run(settings, _create(settings, new))
    if summary is None:
        raise typer.Exit(2)
    _print_coupons([summary], as_json)


async def _create(settings: Settings, new: NewCoupon) -> CouponSummary | None:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        try:
            coupon = await services.coupon_admin().create(new, actor=_actor())
        except InvalidField as exc:
            err.print(f"[red]invalid coupon:[/red] {exc}")
            return None
        return await services.listings.summary(coupon.id, datetime.now(UTC))


@coupons_app.command("list")
def list_coupons(
    limit: Annotated[int, typer.Option(min=1, help="newest first, at most this many")] = 50,
    state: Annotated[
        list[CouponState] | None, typer.Option(help="only coupons in this state (repeatable)", case_sensitive=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List coupons, newest first, with their state (SCHEDULED, OPEN, SOLD_OUT, CLOSED, EXPIRED)."""
    settings = _setup("coupons")
    _print_coupons(run(settings, _list(settings, limit, state or [])), as_json)


async def _list(settings: Settings, limit: int, states: list[CouponState]) -> list[CouponSummary]:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        return await services.listings.summaries(states, None, limit, datetime.now(UTC))


@coupons_app.command("show")
def show(coupon_id: Annotated[int, typer.Argument(min=1)], as_json: JsonOption = False) -> None:
    """One coupon, with its state and pending requests."""
    settings = _setup("coupons")
    found = run(settings, _show(settings, coupon_id))
    if found is None:
        raise _unknown(coupon_id)
    summary, progress = found
    if as_json:
        # "pending" as before; "pendingCount" as the API names it.
        print(json.dumps({**coupon_json(summary), "pending": summary.pending}))
        return
    out.print(_coupons_table([summary]))
    if progress is not None:
        out.print(f"pending requests: {progress.pending} (in the outbox: {progress.unsent})")


async def _show(settings: Settings, coupon_id: int) -> tuple[CouponSummary, CouponProgress | None] | None:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        summary = await services.listings.summary(coupon_id, datetime.now(UTC))
        if summary is None:
            return None
        return summary, await services.operations().coupon_progress(coupon_id)


@coupons_app.command("update")
def update(
    coupon_id: Annotated[int, typer.Argument(min=1)],
    quantity: Annotated[int | None, typer.Option(help="new quantity (never below issued + pending)")] = None,
    name: Annotated[str | None, typer.Option(help="new name")] = None,
    expires_at: Annotated[str | None, typer.Option(help="new expiry, ISO-8601 with offset")] = None,
    expires_in: Annotated[str | None, typer.Option(help="or a duration from now")] = None,
    opens_at: Annotated[str | None, typer.Option(help="new opening time, ISO-8601 with offset")] = None,
    opens_in: Annotated[str | None, typer.Option(help="or a duration from now")] = None,
    no_schedule: Annotated[bool, typer.Option("--no-schedule", help="remove the opening time")] = False,
    as_json: JsonOption = False,
) -> None:
    """Change a coupon during a drop (as PATCH /api/v1/coupons/{id}); the gate follows at once."""
    from couponrush.entrypoints.api.admin_schemas import CouponPatch

    fields: dict[str, Any] = {"name": name, "quantity": quantity}
    fields["expiredAt"] = _when(expires_at, expires_in, "--expires-at", "--expires-in")
    fields["opensAt"] = _when(opens_at, opens_in, "--opens-at", "--opens-in")
    given = {k: v for k, v in fields.items() if v is not None}
    if no_schedule:
        if fields["opensAt"] is not None:
            raise typer.BadParameter("--no-schedule removes the opening time: give no --opens-at/--opens-in with it")
        given["opensAt"] = None
    try:
        edit = CouponPatch.model_validate(given).edit()
    except ValidationError as exc:
        err.print(f"[red]invalid change:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings = _setup("coupons")
    summary = run(settings, _update(settings, coupon_id, edit))
    _print_coupons([summary], as_json)


async def _update(settings: Settings, coupon_id: int, edit: CouponEdit) -> CouponSummary:
    from couponrush.bootstrap import open_services
    from couponrush.service.admission import Unavailable

    async with open_services(settings) as services:
        try:
            coupon = await services.coupon_admin().update(coupon_id, edit, actor=_actor())
        except InvalidField as exc:
            err.print(f"[red]invalid change:[/red] {exc}")
            raise typer.Exit(2) from exc
        except (ChangeRefused, Unavailable) as exc:
            err.print(f"[red]refused:[/red] {exc}")
            raise typer.Exit(1) from exc
        if coupon is None:
            raise _unknown(coupon_id)
        summary = await services.listings.summary(coupon_id, datetime.now(UTC))
        assert summary is not None
        return summary


def _set_status(coupon_id: int, status: CouponStatus, as_json: bool) -> None:
    settings = _setup("coupons")
    summary = run(settings, _status(settings, coupon_id, status))
    if summary is None:
        raise _unknown(coupon_id)
    _print_coupons([summary], as_json)


async def _status(settings: Settings, coupon_id: int, status: CouponStatus) -> CouponSummary | None:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        try:
            coupon = await services.coupon_admin().set_status(coupon_id, status, actor=_actor())
        except ChangeRefused as exc:
            err.print(f"[red]refused:[/red] {exc}")
            raise typer.Exit(1) from exc
        if coupon is None:
            return None
        return await services.listings.summary(coupon_id, datetime.now(UTC))


@coupons_app.command("close")
def close(coupon_id: Annotated[int, typer.Argument(min=1)], as_json: JsonOption = False) -> None:
    """Close a coupon (UNPUBLISHABLE): the gate refuses at once."""
    _set_status(coupon_id, CouponStatus.UNPUBLISHABLE, as_json)


@coupons_app.command("open")
def open_(coupon_id: Annotated[int, typer.Argument(min=1)], as_json: JsonOption = False) -> None:
    """Reopen a coupon (PUBLISHABLE): the gate admits again (an expired coupon cannot be opened)."""
    _set_status(coupon_id, CouponStatus.PUBLISHABLE, as_json)
