"""The role commands: ``couponrush migrate``, ``api``, ``relay``, ``worker``. Each only translates:
it reads the settings, has bootstrap build the parts, and runs the role (roles/*.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import Annotated

import typer

from couponrush.config import Settings, redacted
from couponrush.entrypoints.cli.common import (
    configure_tracing,
    console,
    require_kafka,
    role_endpoint,
    run,
    setup,
    stop_on_signals,
)

log = logging.getLogger("couponrush")


def register(app: typer.Typer) -> None:
    app.command()(migrate)
    app.command()(api)
    app.command()(relay)
    app.command()(worker)


def migrate() -> None:
    """Create the database if missing and apply every pending schema migration."""
    settings = setup("migrate")
    applied = run(settings, apply_migrations(settings))
    console.print(f"[green]schema is current[/green] ({len(applied)} migration(s) applied now)")


async def apply_migrations(settings: Settings) -> list[str]:
    from couponrush.adapters.db import connect, ensure_database, migrate

    if await ensure_database(settings.database_url):
        log.info("created database for %s", redacted(settings.database_url))
    conn = await connect(settings.database_url)
    try:
        return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
    finally:
        await conn.close()


def api(
    workers: Annotated[int, typer.Option(help="HTTP worker processes (0: one per core)")] = 1,
) -> None:
    """Serve the HTTP API on COUPONRUSH_HTTP_HOST:COUPONRUSH_HTTP_PORT."""
    settings = setup("api")
    count = workers if workers > 0 else (os.cpu_count() or 1)
    with _metrics_directory():
        if settings.http_server == "granian":
            _serve_granian(settings, count)
        else:
            _serve_uvicorn(settings, count)


def _serve_granian(settings: Settings, workers: int) -> None:
    """granian's native interface (RSGI): the publish route answered without ASGI (entrypoints/api/rsgi.py)."""
    from granian.constants import Interfaces
    from granian.server import Server

    Server(
        "couponrush.entrypoints.api.rsgi:create_rsgi_app_from_env",
        factory=True,
        address=settings.http_host,
        port=settings.http_port,
        interface=Interfaces.RSGI,
        workers=workers,
        websockets=False,
        backlog=2048,
        # Our root logger (JSON or text, with request ids) writes the app's lines; granian's own stay off.
        log_enabled=False,
        workers_kill_timeout=15,
    ).serve()


def _serve_uvicorn(settings: Settings, workers: int) -> None:
    import uvicorn

    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal against the handler that was
    # installed before it. A no-op Python handler there makes a graceful stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
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


def relay() -> None:
    """Relay the outbox to Kafka (one active relay at a time; others stand by)."""
    settings = setup("relay")
    require_kafka(settings)
    configure_tracing("relay")
    run(settings, _relay(settings))
    log.info("relay stopped")


async def _relay(settings: Settings) -> None:
    from couponrush.bootstrap import open_services, relay_role, relay_sink, relay_topics, require_topics

    stop = stop_on_signals()
    sink = relay_sink(settings)
    try:
        await require_topics(settings, relay_topics(settings), stop)  # COUPONRUSH_KAFKA_TOPICS=verify
        async with (
            open_services(settings, role="relay") as services,
            role_endpoint(services, settings.relay_metrics_port),
        ):
            log.info("relaying to %s once this relay holds the relay lock", settings.kafka_bootstrap_servers)
            await relay_role(services, sink).run(stop)
    finally:
        await sink.close()


def worker() -> None:
    """Consume publish requests and issue coupons (consumer group 'coupon')."""
    settings = setup("worker")
    require_kafka(settings)
    configure_tracing("worker")
    run(settings, _worker(settings))
    log.info("worker stopped")


async def _worker(settings: Settings) -> None:
    from couponrush.bootstrap import (
        open_services,
        require_topics,
        worker_dead_letter_sink,
        worker_role,
        worker_source,
        worker_topics,
    )
    from couponrush.service.stalls import StallProbe

    stop = stop_on_signals()
    dlq_sink = worker_dead_letter_sink(settings)
    try:
        await require_topics(settings, worker_topics(settings), stop)  # COUPONRUSH_KAFKA_TOPICS=verify
        async with open_services(settings, role="worker") as services:
            role = worker_role(services, worker_source(settings), dlq_sink)
            # Not ready while its consumer is stuck: subscribed, assigned nothing, requests waiting.
            probes = [StallProbe(role.stalls)] if role.stalls is not None else []
            async with role_endpoint(services, settings.worker_metrics_port, probes):
                await role.run(stop)
    finally:
        await dlq_sink.close()
