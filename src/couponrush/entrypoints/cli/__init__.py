"""The ``couponrush`` command: one sub-command per role, operator tools, and ``dev`` that runs them all.

Each module registers its commands here; none imports this package back (no import cycles).
"""

from __future__ import annotations

import typer

from couponrush.entrypoints.cli import coupons, dev, maintenance, roles, stats, topics

app = typer.Typer(help="couponrush: first-come-first-served coupon drops.", no_args_is_help=True, add_completion=False)
roles.register(app)
dev.register(app)
app.add_typer(coupons.coupons_app, name="coupons")
app.command("stats")(stats.stats)
maintenance.register(app)
topics.register(app)


def main() -> None:
    app()
