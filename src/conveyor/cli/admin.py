"""Operating commands: ``info``, ``jobs``, ``requeue``, ``purge``."""

from __future__ import annotations

import datetime as dt
import time

import click
from rich.console import Console
from rich.table import Table

from .._app import Conveyor
from .._errors import ConveyorError
from .._message import JobStatus, validate_queue
from ..brokers import redact_url
from ._load import app_for

_app_option = click.option(
    "-A", "--app", "app_spec", metavar="MODULE", help="Module holding your Conveyor app."
)
_url_option = click.option(
    "--url", envvar="CONVEYOR_URL", help="Broker URL (default: CONVEYOR_URL, then ./conveyor.db)."
)
_LISTED = {"failed": JobStatus.FAILED, "dead": JobStatus.DEAD}


def _ago(ts: float) -> str:
    seconds = max(time.time() - ts, 0.0)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _task_name(app: Conveyor, payload: bytes) -> str:
    try:
        return app.codec.decode_message(payload).task
    except ConveyorError:
        return "(undecodable)"


@click.command()
@_app_option
@_url_option
def info(app_spec: str | None, url: str | None) -> None:
    """Queues with their depths, and the live workers."""
    app = app_for(app_spec, url)
    console = Console()
    stats = app.broker.stats()
    queues = Table(title=f"Queues on {redact_url(app.url)}")
    for column in ("queue", "queued", "scheduled", "running", "succeeded", "failed", "dead"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for s in stats:
        queues.add_row(
            s.queue,
            str(s.queued),
            str(s.scheduled),
            str(s.running),
            str(s.succeeded),
            f"[red]{s.failed}[/]" if s.failed else "0",
            f"[red]{s.dead}[/]" if s.dead else "0",
        )
    if not stats:
        queues.caption = "no jobs yet"
    console.print(queues)
    if any(s.running for s in stats):
        console.print(_running_table(app))

    workers = Table(title="Workers")
    for column in ("worker", "pid", "queues", "pool", "concurrency", "processed", "seen"):
        workers.add_column(column)
    for w in sorted(app.broker.workers(), key=lambda w: w.started_at):
        workers.add_row(
            f"{w.id} ({w.host})",
            str(w.pid),
            ",".join(w.queues),
            w.pool,
            str(w.concurrency),
            str(w.processed),
            _ago(w.seen_at),
        )
    if not workers.row_count:
        workers.caption = "no live workers: start one with `conveyor worker MODULE`"
    console.print(workers)


def _running_table(app: Conveyor, limit: int = 10) -> Table:
    """The newest running jobs with the progress their tasks reported."""
    entries = app.broker.entries(JobStatus.RUNNING, None, limit)
    records = app.broker.get([e.id for e in entries])
    table = Table(title="Running jobs")
    for column in ("id", "queue", "task", "progress", "note"):
        table.add_column(column)
    for entry, record in zip(entries, records, strict=True):
        if record is None or record.status is not JobStatus.RUNNING:
            continue  # finished between the two reads
        done = "" if record.progress is None else f"{record.progress:.0%}"
        table.add_row(
            entry.id,
            entry.queue,
            _task_name(app, entry.payload),
            done,
            record.progress_note or "",
        )
    return table


@click.command()
@click.argument("status", type=click.Choice(sorted(_LISTED)))
@click.option("-q", "--queue", default=None, help="Only this queue.")
@click.option("--limit", default=20, show_default=True, help="How many to show.")
@_app_option
@_url_option
def jobs(status: str, queue: str | None, limit: int, app_spec: str | None, url: str | None) -> None:
    """List failed or dead-lettered jobs, newest first."""
    app = app_for(app_spec, url)
    if queue:
        validate_queue(queue)
    entries = app.broker.entries(_LISTED[status], queue, limit)
    table = Table(title=f"{status} jobs")
    for column in ("id", "queue", "task", "reason", "when"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(e.id, e.queue, _task_name(app, e.payload), e.reason, _ago(e.at))
    if not entries:
        table.caption = f"no {status} jobs"
    Console().print(table)


@click.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Requeue every job with the status.")
@click.option(
    "--status",
    type=click.Choice(sorted(_LISTED)),
    default="dead",
    show_default=True,
    help="Which jobs to requeue.",
)
@_app_option
@_url_option
def requeue(
    job_ids: tuple[str, ...], all_: bool, status: str, app_spec: str | None, url: str | None
) -> None:
    """Put failed or dead jobs back on their queue: `conveyor requeue ID...` or `--all`."""
    if bool(job_ids) == all_:
        raise click.UsageError("give job ids or --all (not both)")
    app = app_for(app_spec, url)
    moved = app.requeue_all(_LISTED[status]) if all_ else app.requeue(job_ids)
    click.echo(f"requeued {moved} {status} job(s)")


@click.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_app_option
@_url_option
def purge(queue: str, yes: bool, app_spec: str | None, url: str | None) -> None:
    """Delete every queued and scheduled job of QUEUE (running jobs are left alone)."""
    validate_queue(queue)
    if not yes:
        click.confirm(f"Delete every queued and scheduled job in {queue!r}?", abort=True)
    app = app_for(app_spec, url)
    click.echo(f"purged {app.broker.purge(queue)} job(s) from {queue}")
