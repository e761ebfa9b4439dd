"""``couponrush-bench``: drive couponrush over HTTP like a crowd and measure it (see BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

app = typer.Typer(
    help="Benchmarks: drive the system over HTTP like a crowd and measure it.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)


def _progress() -> tuple[Progress, Callable[[str, int, int], None]]:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    tasks: dict[str, TaskID] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total)
        progress.update(tasks[label], completed=done)

    return progress, update


def _listed(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def suite(
    scenarios: Annotated[
        str, typer.Option(help="comma-separated: ceiling, accept, hot-issue, steady, drop")
    ] = "ceiling,accept,hot-issue,steady,drop",
    variants: Annotated[
        str, typer.Option(help="comma-separated: generator (ceiling), legacy, report, couponrush, couponrush-fetch10")
    ] = "generator,legacy,report,couponrush,couponrush-fetch10",
    runs: Annotated[int, typer.Option(help="runs per variant; medians are reported")] = 3,
    out: Annotated[Path, typer.Option(help="where results.json, summary.md and the plots go")] = Path("bench/results"),
    api_workers: Annotated[int, typer.Option(help="API processes of the system under test")] = 2,
    concurrency: Annotated[int, typer.Option(help="connections of the closed-loop load")] = 64,
    accept_requests: Annotated[int, typer.Option(help="requests of the accept scenario")] = 20_000,
    hot_requests: Annotated[int, typer.Option(help="backlog of the hot-issue scenario")] = 20_000,
    steady_rate: Annotated[float, typer.Option(help="arrivals per second of the steady scenario")] = 1000.0,
    steady_seconds: Annotated[float, typer.Option(help="length of the steady scenario")] = 10.0,
    legacy_interval: Annotated[float, typer.Option(help="batch interval of the legacy design (s)")] = 60.0,
    drop_requests: Annotated[int, typer.Option(help="requests of the big drop")] = 100_000,
    drop_users: Annotated[int, typer.Option(help="distinct users of the big drop")] = 50_000,
    drop_quantity: Annotated[int, typer.Option(help="coupons of the big drop")] = 1000,
    warmup_requests: Annotated[int, typer.Option(help="unmeasured requests before each measured drop")] = 2000,
    postgres: Annotated[
        str, typer.Option(help="the PostgreSQL server (no database) where each run creates its own database")
    ] = "postgresql://postgres@127.0.0.1:5432",
    db_prefix: Annotated[
        str, typer.Option(help="names of the runs' databases start with this and an id of the invocation")
    ] = "couponrush_bench_",
) -> None:
    """Every scenario on fresh systems (started and stopped here), variants measured in one run.

    Each run has its own database (dropped after it), its own redis-server and embedded broker: the bench
    drops and flushes nothing it did not create.
    """
    from couponrush_bench.drops import BenchOptions
    from couponrush_bench.scenarios import SCENARIO_VARIANTS
    from couponrush_bench.suite import run_suite

    chosen = _listed(scenarios)
    unknown = [s for s in chosen if s not in SCENARIO_VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIO_VARIANTS)}")
    progress, update = _progress()
    options = BenchOptions(
        postgres=postgres,
        db_prefix=db_prefix,
        out_dir=out,
        runs=runs,
        api_workers=api_workers,
        concurrency=concurrency,
        accept_requests=accept_requests,
        hot_requests=hot_requests,
        steady_rate=steady_rate,
        steady_seconds=steady_seconds,
        legacy_interval_s=legacy_interval,
        drop_requests=drop_requests,
        drop_users=drop_users,
        drop_quantity=drop_quantity,
        warmup_requests=warmup_requests,
        scenarios=chosen,
        variants=_listed(variants),
        progress=update,
        log=console.print,
    )
    with progress:
        asyncio.run(run_suite(options))
    console.print((out / "summary.md").read_text())
    console.print(f"[green]results in {out}/ (results.json, summary.md, *.png)[/green]")


@app.command()
def drop(
    url: Annotated[str, typer.Option(help="the running API")] = "http://127.0.0.1:8000",
    requests: Annotated[int, typer.Option("--requests", "-n", help="requests to send")] = 10_000,
    users: Annotated[int, typer.Option("--users", "-u", help="distinct users among them")] = 5_000,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="connections (closed loop)")] = 64,
    rate: Annotated[float | None, typer.Option("--rate", "-r", help="open loop: arrivals per second")] = None,
    quantity: Annotated[int, typer.Option("--quantity", "-q", help="coupons in the drop")] = 100,
    out: Annotated[Path, typer.Option(help="where the JSON goes")] = Path("bench/results"),
) -> None:
    """One drop against the system already running (e.g. `make run`); needs COUPONRUSH_ADMIN_TOKEN, and reads
    COUPONRUSH_DATABASE_URL to check the drop's invariants once it has settled."""
    from couponrush.config import ConfigurationError, load_settings
    from couponrush_bench.drops import BenchOptions, drop_against

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        console.print(f"[red]invalid configuration:[/red] {'; '.join(exc.lines)}")
        raise typer.Exit(2) from None
    if settings.admin_token is None:
        console.print("[red]COUPONRUSH_ADMIN_TOKEN must be set (the drop creates its coupon)[/red]")
        raise typer.Exit(2)
    progress, update = _progress()
    options = BenchOptions(out_dir=out, concurrency=concurrency, progress=update, log=console.print)
    with progress:
        figures = asyncio.run(
            drop_against(
                options,
                base_url=url,
                admin_token=settings.admin_token.get_secret_value(),
                database_url=settings.database_url,
                requests=requests,
                users=users,
                quantity=quantity,
                rate=rate,
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"drop-{figures['coupon_id']}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    console.print_json(json.dumps(figures))
    console.print(f"[green]written to {path}[/green]")


@app.command()
def waiters(
    clients: Annotated[int, typer.Option(help="clients waiting at once")] = 10_000,
    idle: Annotated[float, typer.Option(help="seconds of the idle window measured")] = 10.0,
    pg_base: Annotated[
        str, typer.Option(help="PostgreSQL server (no database)")
    ] = "postgresql://postgres@127.0.0.1:5432",
    out: Annotated[Path, typer.Option(help="where the JSON goes")] = Path("bench/results"),
) -> None:
    """What N clients waiting for their outcome (long poll, then SSE) cost an idle API process: memory, CPU,
    and the time from the deciding commit to the last answer. Runs a system of its own (API only)."""
    from couponrush_bench.idle_waiters import run

    out.mkdir(parents=True, exist_ok=True)
    figures = asyncio.run(run(clients, idle, pg_base, out / "waiters-logs"))
    path = out / f"waiters-{clients}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    console.print_json(json.dumps(figures))
    console.print(f"[green]written to {path}[/green]")


@app.command()
def storm(
    pairs: Annotated[int, typer.Option(help="pairs of drops (without, with the storm; the order alternates)")] = 5,
    requests: Annotated[int, typer.Option("--requests", "-n", help="requests of each drop")] = 10_000,
    users: Annotated[int, typer.Option("--users", "-u", help="distinct users of each drop")] = 5_000,
    quantity: Annotated[int, typer.Option("--quantity", "-q", help="coupons of each drop")] = 1_000,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="connections of the drop")] = 50,
    storm_requests: Annotated[int, typer.Option(help="malformed requests sent beside each drop")] = 2_000,
    storm_concurrency: Annotated[int, typer.Option(help="connections of the storm")] = 8,
    out: Annotated[Path, typer.Option(help="where storm.json goes")] = Path("bench/results"),
    postgres: Annotated[
        str, typer.Option(help="the PostgreSQL server (no database) where the run creates its own database")
    ] = "postgresql://postgres@127.0.0.1:5432",
    db_prefix: Annotated[str, typer.Option(help="the database name starts with this")] = "couponrush_bench_",
) -> None:
    """Drops without and with a storm of malformed requests beside them, on one fresh system: the ratios of the
    drop's duration and p99 (with / without), per pair and their medians (RELIABILITY.md)."""
    from couponrush_bench.harness import Sandbox
    from couponrush_bench.servers import ScratchDatabases, run_prefix
    from couponrush_bench.storm import compare

    async def measure() -> dict[str, object]:
        sandbox = Sandbox(ScratchDatabases(postgres, run_prefix(db_prefix)), log_dir=out / "runs" / "storm")
        try:
            system = await sandbox.start_system("storm")
            return await compare(
                system,
                pairs=pairs,
                requests=requests,
                users=users,
                quantity=quantity,
                concurrency=concurrency,
                storm_count=storm_requests,
                storm_concurrency=storm_concurrency,
                log=console.print,
            )
        finally:
            await sandbox.close()

    figures = asyncio.run(measure())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "storm.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    console.print(
        f"median ratios with/without the storm: duration {figures['median_duration_ratio']}, "
        f"p99 {figures['median_p99_ratio']} (written to {path})"
    )


def main() -> None:
    app()
