"""``couponrush dev``: the whole system in one command (needs the ``embedded`` extra for what it starts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from couponrush.entrypoints.cli.common import console, setup


def register(app: typer.Typer) -> None:
    app.command()(dev)


def dev(
    data_dir: Annotated[Path, typer.Option(help="where embedded services keep their data and logs")] = Path(
        ".couponrush/dev"
    ),
    broker_port: Annotated[int, typer.Option(help="port of the embedded broker")] = 9092,
    postgres_port: Annotated[
        int, typer.Option(help="without COUPONRUSH_DATABASE_URL: use PostgreSQL here, or start one here")
    ] = 5432,
    redis_port: Annotated[
        int, typer.Option(help="without COUPONRUSH_REDIS_URL: use Redis here, or start one here")
    ] = 6379,
    api_workers: Annotated[int, typer.Option(help="API processes (0: one per core)")] = 1,
    background_nice: Annotated[
        int, typer.Option(min=0, max=19, help="CPU priority (nice) of the relay and worker below the API's")
    ] = 0,
) -> None:
    """Run the whole system: migrate, then api + relay + worker.

    Whatever is not configured and not answering is started embedded: the Kafka-protocol broker,
    and PostgreSQL and Redis (from the `embedded` extra's wheels), under --data-dir.
    """
    settings = setup("dev")
    try:
        from couponrush.dev.supervisor import DevOptions, DevRefused, run_dev
    except ImportError as exc:  # the embedded extra is missing
        console.print(f"[red]couponrush dev needs the embedded extra:[/red] pip install 'couponrush[embedded]' ({exc})")
        raise typer.Exit(2) from None

    def say(line: str) -> None:
        console.print(f"[cyan]{line}[/cyan]", highlight=False)

    options = DevOptions(
        data_dir=data_dir,
        broker_port=broker_port,
        postgres_port=postgres_port,
        redis_port=redis_port,
        api_workers=api_workers,
        background_nice=background_nice,
    )
    try:
        code = run_dev(options, say, f"http://{settings.http_host}:{settings.http_port}")
    except DevRefused as exc:
        console.print(f"[red]refused:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    raise typer.Exit(code)
