"""``conveyor info``: the queues, the jobs running now and the live workers, at a glance."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table

from .._app import Conveyor
from .._inspect import decode, worker_json
from .._message import JobStatus, WorkerInfo
from ..brokers import redact_url
from ._load import app_options, open_app
from ._output import console, emit_json, iso, json_option, span, table, text
from .queues import queue_json, queues_table

_RUNNING_SHOWN = 10


def running(app: Conveyor, limit: int = _RUNNING_SHOWN) -> list[dict[str, Any]]:
    """The newest running jobs with the progress their tasks reported."""
    entries = app.broker.entries(JobStatus.RUNNING, None, limit)
    records = app.broker.get([e.id for e in entries])
    found = []
    for entry, record in zip(entries, records, strict=True):
        if record is None or record.status is not JobStatus.RUNNING:
            continue  # ended between the two reads
        found.append(
            {
                "id": entry.id,
                "queue": entry.queue,
                "task": decode(app, entry.payload).task,
                "progress": record.progress,
                "progress_note": record.progress_note,
                "updated_at": iso(entry.at),
            }
        )
    return found


def _running_table(jobs: list[dict[str, Any]]) -> Table:
    grid = table("Running jobs", [j["id"] for j in jobs], ("id", "queue", "task", "progress"))
    for j in jobs:
        done = "" if j["progress"] is None else f"{j['progress']:.0%} "
        grid.add_row(
            text(j["id"]),
            text(j["queue"]),
            text(j["task"]),
            text(done + (j["progress_note"] or "")),
        )
    return grid


def _workers_table(workers: list[WorkerInfo]) -> Table:
    now = time.time()
    columns = ("worker", "queues", "pool", "processed", "up", "seen")
    grid = table(
        "Workers", [w.id for w in workers], columns, whole=("pool", "processed", "up", "seen")
    )
    for w in workers:
        grid.add_row(
            text(w.id),
            text(", ".join(w.queues)),
            text(f"{w.pool} x{w.concurrency}"),
            str(w.processed),
            span(now - w.started_at),
            f"{span(now - w.seen_at)} ago",
        )
    if not workers:
        grid.caption = "no live workers (start one: conveyor worker -A MODULE)"
    return grid


@click.command()
@json_option
@app_options
def info(as_json: bool, app_spec: str | None, url: str | None) -> None:
    """Queues with their depths (and which are paused), running jobs, live workers."""
    app = open_app(app_spec, url)
    stats = app.broker.stats()
    busy = running(app) if any(s.running for s in stats) else []
    workers = sorted(app.broker.workers(), key=lambda w: w.started_at)
    warnings = app.broker.warnings()
    if as_json:
        emit_json(
            {
                "broker": redact_url(app.url),
                "warnings": warnings,
                "queues": [queue_json(s) for s in stats],
                "running": busy,
                "workers": [worker_json(w) for w in workers],
            }
        )
        return
    out = console()
    out.print(queues_table(f"Queues on {redact_url(app.url)}", stats))
    if busy:
        out.print(_running_table(busy))
    out.print(_workers_table(workers))
    for line in warnings:  # on stderr: what the broker says of its setup (an evicting Redis)
        click.secho(f"warning: {line}", fg="yellow", err=True)
