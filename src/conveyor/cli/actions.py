"""Changing jobs: ``cancel``, ``requeue``, ``delete`` and ``purge``."""

from __future__ import annotations

import sys
from typing import Any

import click

from .._delete import kept
from .._errors import JobNotEnded, JobNotFound
from .._message import JobStatus
from .._requeue import held_message, requeue_all_counts, requeue_ids
from ._load import app_options, job_id_argument, open_app, queue_argument
from ._output import emit_json, json_option
from .jobs import ENDED


def _ids(job_ids: tuple[str, ...]) -> list[str]:
    """The ids as given, each once, each checked."""
    return [job_id_argument(i) for i in dict.fromkeys(job_ids)]


def _cancelled_line(result: dict[str, Any]) -> str:
    job_id, before, after = result["id"], result["before"], result["after"]
    if result["outcome"] == "cancelled":
        return f"cancelled {job_id} (it was {before})"
    if result["outcome"] == "stopping":
        return f"{job_id} is running: its worker stops it at its next lease renewal"
    return f"{job_id} had already ended ({after}): nothing to cancel"


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@json_option
@app_options
def cancel(job_ids: tuple[str, ...], as_json: bool, app_spec: str | None, url: str | None) -> None:
    """Cancel jobs. A queued or scheduled job is removed at once; a running one is stopped
    by its worker at its next lease renewal; an ended one is left as it is.

    Every id is looked up first: if one is unknown, nothing is cancelled.
    """
    ids = _ids(job_ids)
    app = open_app(app_spec, url)
    records = app.broker.get(ids)
    unknown = [i for i, r in zip(ids, records, strict=True) if r is None]
    if unknown:
        raise JobNotFound(
            f"no job with id {', '.join(map(repr, unknown))} (unknown, purged, or its record "
            "expired); nothing was cancelled"
        )
    results = []
    for job_id, record in zip(ids, records, strict=True):
        assert record is not None
        before, handle = record.status, app.job(job_id)
        if not before.terminal:
            handle.cancel()
        after = handle.status
        if after is JobStatus.CANCELLED and before is not JobStatus.CANCELLED:
            outcome = "cancelled"
        elif after is JobStatus.RUNNING:
            outcome = "stopping"
        else:
            outcome = "already_ended"
        results.append({"id": job_id, "before": before.value, "after": after.value,
                        "outcome": outcome})  # fmt: skip
    if as_json:
        emit_json({"jobs": results})
        return
    for result in results:
        click.echo(_cancelled_line(result))


@click.command()
@click.argument("job_ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "all_", is_flag=True, help="Every ended job with --status.")
@click.option(
    "--status",
    type=click.Choice(ENDED),
    default=None,
    help="With --all: which ended jobs  [default: dead]",
)
@click.option("-q", "--queue", default=None, metavar="QUEUE", help="With --all: only this queue.")
@json_option
@app_options
def requeue(
    *,
    job_ids: tuple[str, ...],
    all_: bool,
    status: str | None,
    queue: str | None,
    as_json: bool,
    app_spec: str | None,
    url: str | None,
) -> int:
    """Put ended jobs back on their queue with their retries afresh.

    \b
    conveyor requeue ID...        these jobs, whether they failed, died or were cancelled
    conveyor requeue --all        every dead job (--status failed|dead|cancelled, --queue Q)

    Every id is checked first: if one is unknown or has not ended (or succeeded), nothing
    is requeued. The exit code is 1 if any job was left as it was (another pending job
    holds its unique key; with --all, also one whose payload this app cannot decode).
    """
    if bool(job_ids) == all_:
        raise click.UsageError("give job ids or --all (not both)")
    if job_ids and (status or queue):
        raise click.UsageError("--status and --queue go with --all; ids are requeued as given")
    if queue:
        queue_argument(queue)
    ids = _ids(job_ids)
    app = open_app(app_spec, url)
    if all_:
        which = JobStatus(status or "dead")
        moved, left = requeue_all_counts(app, which, queue)
        where = f" of queue {queue}" if queue else ""
        line = f"requeued {moved} {which.value} job(s){where}"
        if left:
            line += (
                f"; {left} left as they were, each logged with why (most often a payload this "
                "app cannot decode: pass -A MODULE; or a unique key another pending job holds)"
            )
        document: dict[str, Any] = {"requeued": moved, "ids": None, "status": which.value,
                                    "queue": queue, "left": left, "left_jobs": None}  # fmt: skip
        lines = [line]
    else:
        done = requeue_ids(app, ids)
        moved, left = len(done.back), len(done.left)
        kept = [_left(i, holder) for i, holder in done.left.items()]
        document = {"requeued": moved, "ids": done.back, "status": None, "queue": None,
                    "left": left, "left_jobs": kept}  # fmt: skip
        lines = [f"requeued {moved} job(s)" + (f": {', '.join(done.back)}" if moved else "")]
        lines += [k["message"] for k in kept]
    if as_json:
        emit_json(document)
    else:
        click.echo("\n".join(lines))
    return 1 if left else 0


def _left(job_id: str, holder: str | None) -> dict[str, Any]:
    """One id ``requeue`` left as it was, and why."""
    if holder is not None:
        message = held_message(job_id, holder)
    else:
        message = (
            f"job {job_id} was not requeued: it changed meanwhile (requeued, deleted, purged "
            "or expired by someone else)"
        )
    return {"id": job_id, "held_by": holder, "message": message}


@click.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@app_options
def purge(queue: str, yes: bool, as_json: bool, app_spec: str | None, url: str | None) -> None:
    """Delete every queued and scheduled job of QUEUE (running jobs are left alone)."""
    queue_argument(queue)
    if not yes and not sys.stdin.isatty():
        raise click.UsageError(
            f"purge asks before it deletes, and nobody can answer here (its input is not a "
            f"terminal): pass --yes to purge {queue!r}"
        )
    app = open_app(app_spec, url)
    question = f"Delete every queued and scheduled job in {queue!r}?"
    if not yes and not click.confirm(question, err=True):
        raise click.ClickException(f"nothing was purged from {queue!r}")
    purged = app.broker.purge(queue)
    if as_json:
        emit_json({"queue": queue, "purged": purged})
    else:
        click.echo(f"purged {purged} job(s) from {queue}")


def _deleted(job_id: str, was: JobStatus | None, why: Exception | None) -> dict[str, Any]:
    """One id's result: deleted (with the status it had), or why it was left as it is."""
    if was is not None:
        return {"id": job_id, "outcome": "deleted", "status": was.value,
                "message": f"deleted {job_id} (it was {was})"}  # fmt: skip
    if isinstance(why, JobNotEnded):
        return {"id": job_id, "outcome": "running", "status": "running", "message": str(why)}
    return {"id": job_id, "outcome": "not_found", "status": None, "message": str(why)}


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@json_option
@app_options
def delete(job_ids: tuple[str, ...], as_json: bool, app_spec: str | None, url: str | None) -> int:
    """Delete jobs for good: record, arguments and result. A queued or scheduled job is
    cancelled first (the rest of its workflow fails); an ended one is deleted as it is (a
    job still waiting for it and for another dependency then fails, as after its result
    expired); a running one is left to its worker while it holds a live lease (cancel it,
    and delete it once it ended), and deleted once the lease expired (its worker is gone).

    Every id is looked up first: if one is unknown, nothing is deleted. Each id gets a line;
    the exit code is 1 if any job was not deleted.
    """
    ids = _ids(job_ids)
    app = open_app(app_spec, url)
    found = app.delete(ids)
    why = kept(app, [i for i, was in found.items() if was is None])  # one read for all left
    results = [_deleted(i, was, why.get(i)) for i, was in found.items()]
    if as_json:
        done = sum(r["outcome"] == "deleted" for r in results)
        emit_json({"deleted": done, "jobs": results})
    else:
        for result in results:
            click.echo(result["message"])
    return 0 if all(r["outcome"] == "deleted" for r in results) else 1
