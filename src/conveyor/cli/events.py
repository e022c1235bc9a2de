"""``conveyor events``: follow what happens to jobs and workers, live (like ``celery
events``): one line per event, or one JSON object per line with ``--json``."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from types import FrameType

import click

from .._events import Event, check_types, encode, parse_duration
from ._load import app_options, open_app

_WIDTH = max(len("worker.heartbeat"), len("job.succeeded"))


def _names(values: tuple[str, ...]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def _seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _details(e: Event) -> list[str]:
    """What an event adds to its line, in the order a reader wants it."""
    out = []
    if e.priority:
        out.append(f"priority {e.priority}")
    if e.depends_on:
        out.append(f"after {len(e.depends_on)} job(s)")
    if e.attempt:
        out.append(f"attempt {e.attempt}")
    if e.deliveries is not None and e.deliveries > 1:
        out.append(f"delivery {e.deliveries}")
    if e.duration is not None:
        out.append(f"in {_seconds(e.duration)}")
    if e.error:
        out.append(e.error)
    if e.eta is not None:
        out.append(f"{'again' if e.type == 'job.retried' else 'runs'} at {_clock(e.eta)}")
    if e.reason:
        out.append(e.reason)
    return out


def line(e: Event) -> str:
    """An event as one line of text."""
    head = f"{_clock(e.time)} {e.type:<{_WIDTH}}"
    if e.job_id is not None:
        parts = [e.job_id, e.task or "(unknown task)", f"[{e.queue}]", *_details(e)]
        if e.worker_id:
            parts.append(f"on {e.worker_id}")
    elif e.type == "worker.online":
        where = f"{e.pool} x{e.concurrency}, queues {','.join(e.queues or [])}"
        parts = [e.worker_id or "", where, f"pid {e.pid} on {e.host}"]
    else:
        parts = [e.worker_id or "", f"{e.processed} job(s) processed"]
    return f"{head} {'  '.join(parts)}"


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@click.command()
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line, as published (jq -c)."
)
@click.option(
    "-t",
    "--type",
    "types",
    multiple=True,
    metavar="GLOB",
    help="Only these types, e.g. 'job.*' or job.failed,job.dead (repeat or comma-separate).",
)
@click.option(
    "--since",
    metavar="DURATION",
    help="First the events kept from this far back (30s, 5m, 1h30m), then the new ones.",
)
@app_options
def events(
    as_json: bool, types: tuple[str, ...], since: str | None, app_spec: str | None, url: str | None
) -> None:
    """Follow job and worker events as they happen, until Ctrl-C.

    Every enqueue, start, retry, success, failure, dead letter, cancel and requeue, and
    workers going online, beating and going offline. The broker keeps the last events
    (10,000 by default) for readers that start late: see --since.
    """
    back = parse_duration(since) if since is not None else None
    patterns = check_types(_names(types))  # a typo is refused before the broker is opened
    app = open_app(app_spec, url)
    if not app.events:
        click.echo(
            "note: this app publishes no events (Conveyor(events=False)); showing what "
            "other processes publish",
            err=True,
        )
    signal.signal(signal.SIGTERM, _stop)  # a supervisor's stop is a clean exit, as Ctrl-C
    try:
        for event in app.follow_events(since=back, types=patterns):
            if as_json:
                event.cursor = ""  # where this reader found it: not part of the event
                click.echo(encode(event))
            else:
                click.echo(line(event))
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # piped into head, which has had enough: leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
