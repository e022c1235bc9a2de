"""The dashboard's JSON documents and actions, on the broker port and the app's admin API.

Plain synchronous calls (the web layer runs them in its thread pool); times are ISO-8601
strings in UTC as in every ``--json`` document of the command line (docs/cli.md), except
the charts' series, which are numbers from ``start`` every ``step`` seconds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from .._delete import kept
from .._errors import ConfigurationError
from .._inspect import (
    Decoded,
    decode,
    document,
    iso,
    lookup,
    safe_repr,
    scan,
    unshowable,
    worker_json,
)
from .._message import JobEntry, JobStatus, validate_queue
from ..brokers import redact_url
from ..brokers._port import REQUEUEABLE
from ._graph import graph
from ._monitor import Monitor

if TYPE_CHECKING:
    from .._app import Conveyor
    from ..scheduler import Schedule

PAGE = 50  # jobs per list page
SCAN = 5000  # entries one list page reads at most while looking for jobs of one task
# The deepest a list goes: a broker mostly reads what it skips (SQL's OFFSET; Redis's
# queued and scheduled jobs: offset + 50 per queue).
MAX_OFFSET = 100_000
COUNTS = ("queued", "scheduled", "running", "succeeded", "failed", "dead", "cancelled")
_PREVIEW = 160  # characters of a job's arguments in a list
# JSON of any value a codec decodes: what JSON has no form for (a pickled object, a tuple
# as a dict's key) shows as its repr, or says it cannot be shown (a repr that raises).
ENCODER = msgspec.json.Encoder(enc_hook=safe_repr)


def _status(name: str) -> JobStatus:
    try:
        return JobStatus(name)
    except ValueError:
        raise ConfigurationError(
            f"unknown status {name!r}: use one of {', '.join(COUNTS)}"
        ) from None


def _preview(decoded: Decoded) -> str | None:
    message = decoded.message
    if message is None:
        return None
    text = _inside(message.args)
    if message.kwargs:
        pairs = _inside(message.kwargs)
        text = f"{text}, {pairs}" if text else pairs
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 1] + "…"


def _inside(values: list[Any] | dict[str, Any]) -> str:
    """The JSON of a list or dict without its brackets; one job's odd arguments must not
    take its whole list page down."""
    try:
        return ENCODER.encode(values).decode()[1:-1]
    except Exception as exc:  # what no repr helps with: a list that holds itself
        return unshowable(exc)


class Dashboard:
    def __init__(self, app: Conveyor, *, read_only: bool, refresh: float) -> None:
        self.app = app
        self.read_only = read_only
        self.monitor = Monitor(app, refresh)

    # -- pages -----------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        sample = self.monitor.snapshot()
        charts = self.monitor.charts(sample.at)
        minute = charts.pop("done_last_minute")
        queues = []
        for s in sample.stats:
            row: dict[str, Any] = {"queue": s.queue, "paused": s.paused}
            row.update({name: getattr(s, name) for name in COUNTS})
            row["head_since"] = iso(sample.heads.get(s.queue))
            row["done_last_minute"] = minute.get(s.queue, 0)
            queues.append(row)
        workers = [worker_json(w) for w in sorted(sample.workers, key=lambda w: w.started_at)]
        return {
            **self._common(),
            "sampled_at": iso(sample.at),
            "seq": sample.seq,
            "queues": queues,
            "totals": {name: sum(getattr(s, name) for s in sample.stats) for name in COUNTS},
            "workers": workers,
            "charts": charts,
        }

    def _common(self) -> dict[str, Any]:
        return {
            "broker": redact_url(self.app.url),
            "now": iso(time.time()),
            "read_only": self.read_only,
        }

    def jobs(self, status: str, queue: str | None, task: str | None, offset: int) -> dict[str, Any]:
        """A page of the jobs in ``status``: offsets are the broker's, so with a task
        filter the next page goes on where this one stopped reading."""
        which = _status(status)
        if queue is not None:
            validate_queue(queue)
        if not 0 <= offset <= MAX_OFFSET:
            raise ConfigurationError(
                f"bad offset {offset}: skip from 0 to {MAX_OFFSET:,} jobs; to go deeper, "
                "narrow the list by queue or task"
            )
        # A task filter names a job by its events when its payload is gone: the sample
        # brings the monitor's copy of the event log up to date (counts alone do not).
        stats = self.monitor.snapshot().stats if task else self.monitor.counts()
        chosen = [s for s in stats if queue is None or s.queue == queue]
        count = sum(getattr(s, which.value) for s in chosen)
        # Past the last job (by the counts just read) the broker is not asked: it would read
        # every job it skips. The first page is always read: the counts may lag a second.
        past = offset > 0 and offset >= count
        found, after = ([], None) if past else self._page(which, queue, task, offset)
        return {
            **self._common(),
            "status": which.value,
            "queue": queue,
            "task": task or None,
            "offset": offset,
            "next_offset": after,
            "page_size": PAGE,
            "count": count,
            "counts": {name: sum(getattr(s, name) for s in chosen) for name in COUNTS},
            "queues": [s.queue for s in stats],
            "tasks": sorted({*self.app.registry, *self.monitor.tasks()}),
            "jobs": [self._row(e, d) for e, d in found],
        }

    def _page(
        self, which: JobStatus, queue: str | None, task: str | None, offset: int
    ) -> tuple[list[tuple[JobEntry, Decoded]], int | None]:
        if task:
            return scan(
                self.app, which, queue, task, PAGE, offset=offset, most=SCAN, task_of=self._task_of
            )
        page = self.app.broker.entries(which, queue, PAGE + 1, offset)
        found = [(e, decode(self.app, e.payload)) for e in page[:PAGE]]
        return found, offset + PAGE if len(page) > PAGE else None

    def _task_of(self, job_id: str, decoded: Decoded) -> str | None:
        """The task a row, a job page and the task filter show: the payload's, else the one
        the job's events name (a succeeded job's payload is not kept on Redis)."""
        return decoded.task or self.monitor.task_of(job_id)

    def _row(self, entry: JobEntry, decoded: Decoded) -> dict[str, Any]:
        message = decoded.message
        return {
            "id": entry.id,
            "queue": entry.queue,
            "status": entry.status.value,
            "task": self._task_of(entry.id, decoded),
            "args": _preview(decoded),
            "attempt": message.attempt if message is not None else None,
            "reason": entry.reason or None,
            "updated_at": iso(entry.at),
        }

    def job(self, job_id: str) -> dict[str, Any]:
        record = lookup(self.app, job_id)
        decoded = decode(self.app, self.app.broker.payload(job_id))
        info = document(self.app, record, decoded)
        info["task"] = self._task_of(job_id, decoded)
        info["timeline"] = [
            {
                "type": e.type,
                "time": iso(e.time),
                "worker_id": e.worker_id,
                "attempt": e.attempt,
                "duration": e.duration,
                "error": e.error,
                "reason": e.reason,
            }
            for e in self.monitor.timeline(job_id)
        ]
        info["graph"] = graph(self.app, self.monitor, job_id, decoded.message)
        status = record.status
        info["can_requeue"] = not self.read_only and status in REQUEUEABLE
        info["can_cancel"] = not self.read_only and not status.terminal
        # A running one too: its worker may be gone (a lease expired); if not, the answer
        # says what to do.
        info["can_delete"] = not self.read_only
        return {**self._common(), "job": info}

    def schedules(self) -> dict[str, Any]:
        now = time.time()
        return {**self._common(), "schedules": [_schedule(s, now) for s in self.app.schedules]}

    # -- actions ---------------------------------------------------------------------------

    def requeue(self, job_id: str) -> str:
        moved = self.app.requeue([job_id])
        if moved:
            return f"requeued {job_id}"
        return f"{job_id} stays as it is: another pending job holds its unique key"

    def cancel(self, job_id: str) -> str:
        handle = self.app.job(job_id)
        before = handle.status
        if before.terminal:
            return f"{job_id} had already ended ({before}): nothing to cancel"
        handle.cancel()
        if handle.status is JobStatus.RUNNING:
            return f"{job_id} is running: its worker stops it at its next lease renewal"
        return f"cancelled {job_id} (it was {before})"

    def delete(self, job_id: str) -> str:
        """``app.delete``: a pending job is cancelled first; one left as it is raises why
        (running under a live lease: 409; gone meanwhile: 404)."""
        was = self.app.delete([job_id])[job_id]
        if was is None:
            raise kept(self.app, [job_id])[job_id]
        return f"deleted {job_id} (it was {was})"

    def requeue_all(self, queue: str, status: str) -> str:
        which = next((s for s in REQUEUEABLE if s.value == status), None)
        if which is None:
            raise ConfigurationError(
                f"requeue takes ?status=failed, dead or cancelled (the jobs that ended), "
                f"not {status!r}"
            )
        moved = self.app.requeue_all(which, validate_queue(queue))
        return f"requeued {moved} {which} job(s) of queue {queue}"

    def pause(self, queue: str) -> str:
        self.app.pause(queue)
        return f"paused queue {queue}: its jobs stay queued until it is resumed"

    def resume(self, queue: str) -> str:
        self.app.resume(queue)
        return f"resumed queue {queue}"

    def purge(self, queue: str) -> str:
        purged = self.app.broker.purge(validate_queue(queue))
        return f"deleted {purged} queued and scheduled job(s) of queue {queue}"


def _schedule(schedule: Schedule, now: float) -> dict[str, Any]:
    fires = [schedule.next_after(now)]
    for _ in range(4):
        fires.append(schedule.next_after(fires[-1]))
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "every": schedule.every,
        "tz": schedule.tz,
        "overlap": schedule.overlap,
        "next_fire_at": iso(fires[0]),
        "upcoming": [iso(t) for t in fires],
    }
