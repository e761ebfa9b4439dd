"""``couponrush topics migrate|status``: re-partition the request topic by versions during a drop."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console

from couponrush.config import Settings
from couponrush.entrypoints.cli.common import console, require_kafka, run, setup


def register(app: typer.Typer) -> None:
    app.add_typer(topics_app, name="topics")


topics_app = typer.Typer(help="Versioned Kafka topics (re-partitioning while a drop runs).", no_args_is_help=True)


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

    settings = setup("topics")
    require_kafka(settings)
    try:
        version = parse_version(to)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    raise typer.Exit(run(settings, _topics_migrate(settings, version, partitions, wait, timeout, delete_old)))


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
    settings = setup("topics")
    run(settings, _topics_status(settings))


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
