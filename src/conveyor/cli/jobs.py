"""Looking at jobs: ``conveyor jobs STATUS`` lists them, ``conveyor job ID`` shows one."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import click
from rich.table import Table

from .._inspect import Decoded, TaskNames, describe, find, safe_repr
from .._message import JobEntry, JobStatus
from ..brokers._base import PAGE_MAX
from ._load import app_options, job_id_argument, open_app, queue_argument
from ._output import clock, console, emit_json, iso, json_option, plain, span, table, text, when

STATUSES = [s.value for s in JobStatus]  # queued, scheduled, running, ... in lifecycle order
ENDED = ("failed", "dead", "cancelled")  # what requeue takes back; each keeps a reason


def _entry_json(entry: JobEntry, decoded: Decoded, task: str | None) -> dict[str, Any]:
    message = decoded.message
    return {
        "id": entry.id,
        "queue": entry.queue,
        "status": entry.status.value,
        "task": task,
        "attempt": message.attempt if message is not None else None,
        "reason": entry.reason or None,
        "updated_at": iso(entry.at),
    }


def undecodable_hint(problems: list[str]) -> str | None:
    """A caption when payloads could not be read: most often a missing -A (secret, pickle)."""
    bad = [p for p in problems if p.startswith("undecodable")]
    if not bad:
        return None
    return f"{len(bad)} payload(s) {bad[0]}; pass -A MODULE so your app's codec and secret are used"


def passed_over_note(status: str, passed: int) -> str:
    """What --task could not see: jobs no payload nor event names the task of."""
    return (
        f"{passed} {status} job(s) passed over, their task unknown: their payload is not kept "
        "on this broker and no event in its log names it (the log dropped their events, or "
        "the app publishes none)"
    )


@click.command()
@click.argument("status", type=click.Choice(STATUSES), metavar="STATUS")
@click.option("-q", "--queue", default=None, metavar="QUEUE", help="Only this queue.")
@click.option(
    "-t",
    "--task",
    default=None,
    metavar="NAME",
    help="Only jobs of this task: myapp.tasks:resize, or just resize.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=PAGE_MAX),
    metavar="N",
    default=20,
    show_default=True,
    help="Show at most this many.",
)
@json_option
@app_options
def jobs(
    *,
    status: str,
    queue: str | None,
    task: str | None,
    limit: int,
    as_json: bool,
    app_spec: str | None,
    url: str | None,
) -> None:
    """List the jobs in STATUS: queued, scheduled, running, succeeded, failed, dead or
    cancelled.

    Queued jobs come in the order workers take them, scheduled ones soonest first, the
    others most recently changed first. --task reads payloads page by page until --limit
    jobs of that task are found; a job whose payload is not kept (succeeded, on Redis) is
    named by its events in the broker's event log.
    """
    if queue:
        queue_argument(queue)
    app = open_app(app_spec, url)
    names = TaskNames(app)
    found = find(app, JobStatus(status), queue, task, limit, task_of=names)
    tasks = [names(e.id, d) for e, d in found]
    passed = len(names.unknown) if task else 0  # unknown, so not matched: maybe of ``task``
    if as_json:
        emit_json(
            {
                "status": status,
                "queue": queue,
                "task": task,
                "passed_over": passed,
                "jobs": [_entry_json(e, d, n) for (e, d), n in zip(found, tasks, strict=True)],
            }
        )
        return
    ended = status in ENDED
    columns = ("id", "queue", "task", *(("reason",) if ended else ()), "updated")
    grid = table(f"{status} jobs", [e.id for e, _ in found], columns, whole=("updated",))
    for (entry, decoded), name in zip(found, tasks, strict=True):
        cells = [text(entry.id), text(entry.queue), text(name or decoded.label())]
        if ended:
            cells.append(text(entry.reason))
        grid.add_row(*cells, when(entry.at))
    if found:
        grid.caption = undecodable_hint([d.problem for _, d in found if d.problem])
    elif not passed:  # with jobs passed over, "none" would not be true
        where = f" in queue {queue}" if queue else ""
        grid.caption = f"no {status} jobs{where}" + (f" of task {task}" if task else "")
    out = console()
    out.print(grid)
    if passed:  # on a line of its own: a caption wraps at the table's width
        out.print(text(passed_over_note(status, passed)))


# -- one job ---------------------------------------------------------------------------------


def _compact(value: object) -> str:
    return json.dumps(plain(value), ensure_ascii=False, allow_nan=False, default=safe_repr)


def _attempt(info: dict[str, Any]) -> str:
    attempt, retries = info["attempt"], info["retries"]
    if attempt is None:
        return ""
    if attempt == 0:
        allowed = (
            "no retries" if not retries else f"up to {retries} retr{'y' if retries == 1 else 'ies'}"
        )
        return f"first run ({allowed})"
    return f"retry {attempt} of {retries}"


def _stamp(moment: str | None) -> str:
    """An ISO time from ``describe`` for people: UTC to the second, and how long ago."""
    if moment is None:
        return ""
    ts = dt.datetime.fromisoformat(moment).timestamp()
    return f"{clock(ts)} UTC ({span(time.time() - ts)} ago)"


def _show(info: dict[str, Any]) -> None:
    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, object]] = [
        ("id", info["id"]),
        ("task", info["task"] or f"({info['payload_error']})"),
        ("queue", info["queue"]),
        ("status", info["status"]),
    ]
    if info["args"] is not None:
        rows += [("args", _compact(info["args"])), ("kwargs", _compact(info["kwargs"]))]
    rows += [("attempt", _attempt(info)), ("deliveries", info["deliveries"])]
    rows += [("enqueued", _stamp(info["enqueued_at"])), ("updated", _stamp(info["updated_at"]))]
    if info["progress"] is not None or info["progress_note"]:
        done = "" if info["progress"] is None else f"{info['progress']:.0%} "
        rows.append(("progress", done + (info["progress_note"] or "")))
    if info["depends_on"]:
        rows.append(("depends on", ", ".join(info["depends_on"])))
    if info["status"] == "succeeded":
        rows.append(("result", _compact(info["result"])))
    error = info["error"]
    if error is not None:
        rows.append(("error", f"{error['type']}: {error['message']}"))
    if info["reason"] and (error is None or info["reason"] != rows[-1][1]):
        rows.append(("reason", info["reason"]))
    for name, value in rows:
        grid.add_row(name, text(value))
    out.print(grid)
    if info["error"] is not None and info["error"]["traceback"]:
        out.print()
        out.print(text(info["error"]["traceback"].rstrip()))


@click.command()
@click.argument("job_id", metavar="ID")
@json_option
@app_options
def job(job_id: str, as_json: bool, app_spec: str | None, url: str | None) -> None:
    """Show one job: task, arguments, status, attempts, times, progress, and its result
    or its error with the traceback."""
    job_id_argument(job_id)
    app = open_app(app_spec, url)
    info = describe(app, job_id)
    if as_json:
        emit_json(info)
    else:
        _show(info)
