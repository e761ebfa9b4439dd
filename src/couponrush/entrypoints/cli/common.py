"""What every ``couponrush`` command shares: settings read with friendly errors, logging, signals, exits.

A command that fails for a reason an operator can fix (a wrong variable, a service that does not
answer) prints one or two lines naming the ``COUPONRUSH_*`` variable and exits non-zero; the
traceback is shown only with ``COUPONRUSH_LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from couponrush.config import ConfigurationError, Settings, load_settings, unknown_variables

if TYPE_CHECKING:
    from couponrush.bootstrap import Services
    from couponrush.observability.health import Probe

console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("couponrush")

T = TypeVar("T")


def _debugging() -> bool:
    return os.environ.get("COUPONRUSH_LOG_LEVEL", "").upper() == "DEBUG"


def setup(role: str, *, to_stderr: bool = False) -> Settings:
    """Read the settings (exit 2 naming each bad variable), configure logging, warn of unknown variables."""
    from couponrush.observability.logging import configure_logging

    try:
        settings = load_settings()
    except ConfigurationError as exc:
        for line in exc.lines:
            console.print(f"[red]invalid configuration:[/red] {line}", markup=True, highlight=False)
        if _debugging():
            raise
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, role, settings.log_format, stream=sys.stderr if to_stderr else None)
    for name, closest in unknown_variables(os.environ):
        hint = f"; did you mean {closest}?" if closest else ""
        log.warning("%s is not a couponrush setting and is ignored%s", name, hint)
    return settings


def run(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(work)``; a failure to reach PostgreSQL, Redis or Kafka becomes one line and exit 1."""
    with friendly_failures(settings):
        return asyncio.run(work)


@contextlib.contextmanager
def friendly_failures(settings: Settings) -> Iterator[None]:
    from couponrush.adapters.failures import describe_unreachable

    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        line = describe_unreachable(exc, settings)
        if line is None or _debugging():
            raise
        console.print(f"[red]error:[/red] {line}", highlight=False)
        raise typer.Exit(1) from None


def require_kafka(settings: Settings) -> None:
    if not settings.kafka_configured:
        console.print(
            "[red]COUPONRUSH_KAFKA_BOOTSTRAP_SERVERS is not set.[/red] Point it at a Kafka cluster, "
            "or run `couponrush dev`, which starts an embedded broker."
        )
        raise typer.Exit(2)
    from couponrush.bootstrap import kafka_configuration_problem

    problem = kafka_configuration_problem(settings)
    if problem is not None:
        console.print(f"[red]invalid configuration:[/red] {problem}", highlight=False)
        raise typer.Exit(2)


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT: every role drains and exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


@contextlib.asynccontextmanager
async def role_endpoint(services: Services, port: int, extra: Sequence[Probe] = ()) -> AsyncIterator[None]:
    """The relay's or worker's /metrics, /health/live and /health/ready on ``port`` (0: none)."""
    from couponrush.observability.server import ObservabilityServer

    if port == 0:
        yield
        return
    server = ObservabilityServer([*services.probes(), *extra])
    await server.start(services.settings.metrics_host, port)
    try:
        yield
    finally:
        await server.close()


def configure_tracing(role: str) -> None:
    from couponrush.observability.tracing import configure_tracing as configure

    configure(role)
