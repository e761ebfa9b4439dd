"""Repair and inspection commands: ``redis rebuild``, ``reconcile``, ``dlq list|replay``, ``user-token``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from couponrush.config import Settings
from couponrush.entrypoints.cli.common import console, require_kafka, run, setup

if TYPE_CHECKING:
    from couponrush.service.ports import InboundRecord
    from couponrush.service.reconcile import CouponReport

redis_app = typer.Typer(help="The Redis gate (a cache of the database).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: records the worker could not process.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(redis_app, name="redis")
    app.add_typer(dlq_app, name="dlq")
    app.command()(reconcile)
    app.command("user-token")(user_token_command)


@redis_app.command("rebuild")
def redis_rebuild() -> None:
    """Rebuild the admission gate of every open coupon from PostgreSQL (safe during a drop)."""
    settings = setup("redis-rebuild")
    results = run(settings, _redis_rebuild(settings))
    for coupon_id, rebuilt in sorted(results.items()):
        console.print(f"coupon {coupon_id}: {'[green]rebuilt[/green]' if rebuilt else '[yellow]skipped[/yellow]'}")
    console.print(f"{sum(results.values())} of {len(results)} open coupon gate(s) rebuilt")
    if not all(results.values()):
        raise typer.Exit(1)


async def _redis_rebuild(settings: Settings) -> dict[int, bool]:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        return await services.rebuilder.rebuild_all()


def user_token_command(
    user_id: Annotated[int, typer.Argument(help="the user id the token names")],
    ttl: Annotated[int, typer.Option(help="seconds until it expires")] = 3600,
) -> None:
    """Print a bearer token for one user, signed with COUPONRUSH_USER_TOKEN_SECRET."""
    from couponrush.service.identity import user_token

    settings = setup("user-token", to_stderr=True)
    if settings.user_token_secret is None:
        console.print("[red]COUPONRUSH_USER_TOKEN_SECRET is not set[/red]: user routes need no token.")
        raise typer.Exit(2)
    print(user_token(settings.user_token_secret.get_secret_value(), user_id, ttl_s=ttl))


def reconcile() -> None:
    """Compare every open coupon's Redis gate with PostgreSQL, repair the gate, and report."""
    settings = setup("reconcile")
    reports = run(settings, _reconcile(settings))
    for report in reports:
        console.print(report.line(), markup=False)
    repaired = sum(r.repaired for r in reports)
    unrepaired = sum(bool(r.problems) and not r.repaired for r in reports)
    stuck = sum(r.stuck for r in reports)
    console.print(
        f"{len(reports)} open coupon(s) checked, {repaired} gate(s) repaired, {unrepaired} not repaired, "
        f"{stuck} accepted request(s) stuck"
    )
    if stuck:
        console.print(
            f"[red]{stuck} accepted request(s) are undecided after {settings.redrive_after_s:g}s with nothing "
            "queued for them[/red]: is a worker consuming the request topic? (see the lines above for their ids)"
        )
    if unrepaired or stuck:
        raise typer.Exit(1)


async def _reconcile(settings: Settings) -> list[CouponReport]:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        return await services.reconciler().reconcile()


@dlq_app.command("list")
def dlq_list() -> None:
    """Show every record parked on the request topic's dead-letter topic."""
    from couponrush.service.dlq import DeadLetter

    settings = setup("dlq")
    require_kafka(settings)
    letters = [DeadLetter.of(r) for r in run(settings, _read_dead_letters(settings))]
    for d in letters:
        console.print(
            f"#{d.offset} {d.original_topic}[{d.original_partition}]@{d.original_offset} {d.reason} "
            f"attempts={d.attempts} request={d.request_id or '-'} error={d.error[:160]!r}",
            markup=False,
        )
    console.print(f"{len(letters)} dead letter(s)")


@dlq_app.command("replay")
def dlq_replay() -> None:
    """Re-publish dead letters not replayed before to their original topic (through the outbox)."""
    settings = setup("dlq")
    require_kafka(settings)
    republished, kept = run(settings, _dlq_replay(settings))
    console.print(f"{republished} dead letter(s) re-published, {kept} kept (no unit left at the gate)")


async def _read_dead_letters(settings: Settings, *, group: str | None = None) -> list[InboundRecord]:
    from couponrush.adapters.dlq import read_all
    from couponrush.bootstrap import dead_letter_source

    source = dead_letter_source(settings, group=group)
    await source.start()
    try:
        return await read_all(source)
    finally:
        await source.close()


async def _dlq_replay(settings: Settings) -> tuple[int, int]:
    from couponrush.adapters.dlq import PostgresRequeue, read_all
    from couponrush.bootstrap import dead_letter_source, open_services
    from couponrush.service.dlq import DeadLetterReplay

    # A group of its own remembers what was replayed: each dead letter is replayed once.
    source = dead_letter_source(settings, group=f"{settings.consumer_group}.dlq-replay")
    await source.start()
    try:
        records = await read_all(source)
        async with open_services(settings) as services:
            replay = DeadLetterReplay(
                gate=services.gate, ledger=services.request_log(), requeue=PostgresRequeue(services.pool)
            )
            report = await replay.replay(records)
        for letter, why in report.kept:
            console.print(f"kept #{letter.offset} request={letter.request_id}: {why}", markup=False)
        await source.commit(records)
        return len(report.republished), len(report.kept)
    finally:
        await source.close()
