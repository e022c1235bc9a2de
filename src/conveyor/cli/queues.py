"""``conveyor queues``: the queues with their depths; ``pause`` and ``resume`` one."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from .._app import Conveyor
from .._message import QueueStats
from ..brokers import redact_url
from ._load import app_options, open_app, queue_argument
from ._output import console, counts_table, emit_json, json_option, text

COUNTS = ("queued", "scheduled", "running", "succeeded", "failed", "dead", "cancelled")
_RED = {"failed", "dead"}


def queue_json(stats: QueueStats) -> dict[str, Any]:
    row: dict[str, Any] = {"queue": stats.queue, "paused": stats.paused}
    row.update({name: getattr(stats, name) for name in COUNTS})
    return row


def queues_table(title: str, stats: list[QueueStats]) -> Table:
    names = [text(s.queue) for s in stats]
    for s, name in zip(stats, names, strict=True):
        if s.paused:
            name.append(" paused", style="bold yellow")
    grid = counts_table(title, (n.plain for n in names), ("queue", *COUNTS))
    for s, name in zip(stats, names, strict=True):
        counts = [(c, getattr(s, c)) for c in COUNTS]
        grid.add_row(name, *(f"[red]{n}[/]" if n and c in _RED else str(n) for c, n in counts))
    if not stats:
        grid.caption = "no queues yet: they appear with their first job"
    return grid


@click.group(invoke_without_command=True)
@json_option
@app_options
@click.pass_context
def queues(ctx: click.Context, as_json: bool, app_spec: str | None, url: str | None) -> None:
    """List the queues with their depths and whether they are paused.

    \b
    conveyor queues pause NAME    workers take no new job from NAME (running ones finish)
    conveyor queues resume NAME   they take its jobs again within a second
    """
    if ctx.invoked_subcommand is not None:
        return
    app = open_app(app_spec, url)
    stats = app.broker.stats()
    if as_json:
        emit_json({"broker": redact_url(app.url), "queues": [queue_json(s) for s in stats]})
    else:
        console().print(queues_table(f"Queues on {redact_url(app.url)}", stats))


def _open(ctx: click.Context, name: str, app_spec: str | None, url: str | None) -> Conveyor:
    """The app for pause and resume: their own -A/--url, else those given to ``queues``."""
    queue_argument(name)
    group = ctx.parent.params if ctx.parent is not None else {}
    return open_app(app_spec or group.get("app_spec"), url or group.get("url"))


@queues.command()
@click.argument("name")
@app_options
@click.pass_context
def pause(ctx: click.Context, name: str, app_spec: str | None, url: str | None) -> None:
    """Stop handing out NAME's jobs: they stay queued, running ones finish. Workers and
    restarts keep it paused until `conveyor queues resume NAME`."""
    app = _open(ctx, name, app_spec, url)
    app.pause(name)
    click.echo(f"paused queue {name}: its jobs stay queued until `conveyor queues resume {name}`")


@queues.command()
@click.argument("name")
@app_options
@click.pass_context
def resume(ctx: click.Context, name: str, app_spec: str | None, url: str | None) -> None:
    """Hand out NAME's jobs again (workers waiting on it take them within a second)."""
    app = _open(ctx, name, app_spec, url)
    app.resume(name)
    click.echo(f"resumed queue {name}")
