"""Reading jobs for people: what ``conveyor jobs``, ``conveyor job`` and the dashboard show.

Payloads are decoded with the app's codec (a job another codec wrote says why it cannot be
read instead of failing the listing); a job whose payload is gone (succeeded, on Redis) is
named by its events in the broker's log. Times are ISO-8601 strings in UTC, the convention
of every JSON document the command line and the dashboard give (docs/cli.md); a value JSON
has no form for is shown as its repr (``safe_repr``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from . import _events
from ._errors import ConveyorError, JobNotFound
from ._message import (
    JobEntry,
    JobRecord,
    JobStatus,
    Message,
    Outcome,
    WorkerInfo,
    validate_job_id,
)

if TYPE_CHECKING:
    from ._app import Conveyor

_PAGE = 200  # entries read per call while looking for jobs of one task
_EVENTS_PAGE = 1000  # events read per call while naming the jobs whose payload is gone
_LOG_MOST = 2_000_000  # events read at most while doing so (the log keeps 10,000 by default)
NOT_KEPT = "payload not kept"  # a succeeded job's problem on Redis

# user:password@ in any URL an error message carries, but for the placeholder PASSWORD of
# the URLs our messages suggest (``redis://USER:PASSWORD@host``): masked, they read as nonsense
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)(?!PASSWORD@)[^\s/@]+@")


def redact(message: str) -> str:
    """The message with any URL's password masked (the placeholder PASSWORD stays)."""
    return _CREDENTIALS.sub(r"\g<head>***@", message)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with milliseconds (``...T14:05:09.120Z``); None stays."""
    if ts is None or ts <= 0:
        return None
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def unshowable(exc: Exception) -> str:
    """What stands for a value that cannot be shown: what showing it raised."""
    return f"(cannot be shown: {type(exc).__name__})"


def safe_repr(value: object) -> str:
    """A value JSON has no form for (a pickled object) as its repr; one whose ``__repr__``
    raises as ``unshowable`` says, so one odd argument cannot fail a whole document."""
    try:
        return repr(value)
    except Exception as exc:
        return unshowable(exc)


@dataclass
class Decoded:
    """A payload read with the app's codec: the message, or why there is none."""

    message: Message | None
    problem: str | None  # "undecodable: ...", or NOT_KEPT (succeeded, on Redis)

    @property
    def task(self) -> str | None:
        return self.message.task if self.message is not None else None

    def label(self) -> str:
        return self.task or f"({self.problem})"


def decode(app: Conveyor, payload: bytes | None) -> Decoded:
    if not payload:
        return Decoded(None, NOT_KEPT)
    try:
        return Decoded(app.codec.decode_message(payload), None)
    except ConveyorError as exc:
        return Decoded(None, f"undecodable: {exc}")


def task_matches(name: str | None, wanted: str) -> bool:
    """A task is named by its full name (``myapp.tasks:resize``) or, for a task registered
    under that form, by the part after the colon (``resize``)."""
    return name is not None and (name == wanted or name.partition(":")[2] == wanted)


# A job's task, from its id and its payload read: the payload's, else what else knows it.
TaskOf = Callable[[str, Decoded], str | None]


def own_task(job_id: str, decoded: Decoded) -> str | None:
    """The task the payload names, nothing else."""
    return decoded.task


class TaskNames:
    """A job's task as its payload names it, else as its events in the broker's log do (the
    task of a succeeded job on Redis, whose payload is not kept). The log is read once, when
    the first job without a payload asks. ``unknown``: the jobs asked about whose payload is
    not kept and whose events are not in the log (gone, or never published: events=False).
    """

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self.unknown: set[str] = set()
        self._logged: dict[str, str] | None = None

    def __call__(self, job_id: str, decoded: Decoded) -> str | None:
        if decoded.task is not None:
            return decoded.task
        if self._logged is None:
            self._logged = logged_tasks(self.app)
        name = self._logged.get(job_id)
        if name is None and decoded.problem == NOT_KEPT:
            self.unknown.add(job_id)
        return name


def logged_tasks(app: Conveyor) -> dict[str, str]:
    """Job id -> task, as the job events in the broker's log name it: the whole log, from
    its oldest event to its newest. Not bounded by this app's ``events_kept``: a sharded
    Redis prefix keeps that many per shard and one more, and the workers' apps may keep
    more than this one, so a bound of twice it stopped short of the newest jobs and said
    their events had left the log. ``_LOG_MOST`` only stops a read that workers outpace."""
    broker = app.broker
    names: dict[str, str] = {}
    after, most = None, _LOG_MOST
    while most > 0:
        size = min(_EVENTS_PAGE, most)
        page = broker.read_events(after, 0, size)
        for _, data in page:
            try:
                event = _events.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not a Conveyor event (written by hand): it names nothing
            if event.job_id is not None and event.task:
                names[event.job_id] = event.task
        if len(page) < size:
            break
        after, most = page[-1][0], most - len(page)
    return names


def scan(
    app: Conveyor,
    status: JobStatus,
    queue: str | None,
    task: str,
    limit: int,
    *,
    offset: int = 0,
    most: int | None = None,
    task_of: TaskOf = own_task,
) -> tuple[list[tuple[JobEntry, Decoded]], int | None]:
    """Up to ``limit`` jobs of ``task`` in ``status``, in the broker's order, read page by
    page from the broker's ``offset``; and the offset to go on from (None: none are left).
    ``most`` bounds how many entries one call reads (None: as many as it takes); ``task_of``
    names each job's task (it must be what the listing shows)."""
    found: list[tuple[JobEntry, Decoded]] = []
    page = max(limit, _PAGE)
    while most is None or most > 0:
        size = page if most is None else min(page, most)
        batch = app.broker.entries(status, queue, size, offset=offset)
        for i, entry in enumerate(batch):
            decoded = decode(app, entry.payload)
            if task_matches(task_of(entry.id, decoded), task):
                found.append((entry, decoded))
                if len(found) == limit:
                    return found, offset + i + 1
        offset += len(batch)
        if len(batch) < size:
            return found, None
        most = None if most is None else most - len(batch)
    return found, offset


def find(
    app: Conveyor,
    status: JobStatus,
    queue: str | None,
    task: str | None,
    limit: int,
    *,
    task_of: TaskOf = own_task,
) -> list[tuple[JobEntry, Decoded]]:
    """Up to ``limit`` jobs in ``status``, in the broker's order; with ``task``, pages
    through the status until ``limit`` of that task (as ``task_of`` names it) are found or
    none are left."""
    if task is None:
        return [(e, decode(app, e.payload)) for e in app.broker.entries(status, queue, limit)]
    return scan(app, status, queue, task, limit, task_of=task_of)[0]


def outcome_of(app: Conveyor, record: JobRecord) -> Outcome | None:
    if not record.result:
        return None
    try:
        return app.codec.decode_outcome(record.result)
    except ConveyorError as exc:
        return Outcome(reason=f"(undecodable result: {exc})")


def lookup(app: Conveyor, job_id: str) -> JobRecord:
    """The job's record; ``JobNotFound`` saying where to look for one that is not known."""
    record = app.broker.get([validate_job_id(job_id)])[0]
    if record is None:
        raise JobNotFound(
            f"no job with id {job_id!r} (unknown, purged, or its record expired after its "
            "result TTL); `conveyor jobs STATUS` lists the jobs there are"
        )
    return record


def describe(app: Conveyor, job_id: str) -> dict[str, Any]:
    """Everything known about one job, with the keys ``conveyor job --json`` prints."""
    record = lookup(app, job_id)
    return document(app, record, decode(app, app.broker.payload(job_id)))


def document(app: Conveyor, record: JobRecord, decoded: Decoded) -> dict[str, Any]:
    """``describe`` of a record and its payload already read."""
    message, outcome = decoded.message, outcome_of(app, record)
    error = outcome.error if outcome is not None else None
    succeeded = record.status is JobStatus.SUCCEEDED
    reason = record.reason or (outcome.reason if outcome is not None else None)
    return {
        "id": record.id,
        "task": decoded.task,
        "queue": record.queue,
        "status": record.status.value,
        "args": message.args if message is not None else None,
        "kwargs": message.kwargs if message is not None else None,
        "attempt": message.attempt if message is not None else None,
        "retries": message.retries if message is not None else None,
        "deliveries": record.deliveries,
        "priority": message.priority if message is not None else None,
        "key": message.key if message is not None else None,
        "depends_on": list(message.depends_on) if message is not None else None,
        "enqueued_at": iso(message.enqueued_at) if message is not None else None,
        "updated_at": iso(record.updated_at),
        "progress": record.progress,
        "progress_note": record.progress_note,
        "result": outcome.value if outcome is not None and succeeded else None,
        "error": (
            {"type": error.type, "message": error.message, "traceback": error.traceback}
            if error is not None
            else None
        ),
        "reason": reason or None,
        "payload_error": decoded.problem,
    }


def worker_json(w: WorkerInfo) -> dict[str, Any]:
    """A live worker as ``conveyor info --json`` and the dashboard give it."""
    return {
        "id": w.id,
        "host": w.host,
        "pid": w.pid,
        "queues": list(w.queues),
        "pool": w.pool,
        "concurrency": w.concurrency,
        "busy": w.busy,
        "processed": w.processed,
        "started_at": iso(w.started_at),
        "seen_at": iso(w.seen_at),
    }
