"""``conveyor.current_job()``: what a running task knows about its own job."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from ._checks import refuse
from ._errors import ConveyorError

NOTE_CAP = 1000  # characters of a progress note that are kept


class CurrentJob:
    """The job the calling task is running as. Made by the worker; read it, don't build it."""

    def __init__(
        self,
        *,
        job_id: str,
        task: str,
        queue: str,
        attempt: int,
        deliveries: int,
        report: Callable[[float, str | None], None],
    ) -> None:
        self.id = job_id
        """The job's id."""
        self.task = task
        """The task's name (``module:function`` unless ``@app.task(name=...)`` gave one)."""
        self.queue = queue
        """The queue the job came from."""
        self.attempt = attempt
        """0 for the first run, n for the n-th retry."""
        self.deliveries = deliveries
        """How often the job was handed out, this time included."""
        self._report = report

    def progress(self, value: float, note: str | None = None) -> None:
        """Report how far the job is, from 0.0 to 1.0, with an optional note.

        Callers see it on ``job.progress`` and in ``conveyor info``; a value out of range, or
        a note that is not a str, is an ``InvalidOption``. A note is a short status line: past
        ``NOTE_CAP`` characters it is cut."""
        example = "current_job().progress(0.5, 'halfway')"
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and 0.0 <= value <= 1.0):  # NaN is not
            raise refuse("progress", value, "progress takes a fraction from 0.0 to 1.0", example)
        if note is not None:
            if not isinstance(note, str):
                raise refuse("note", note, "a progress note is a str or None", example)
            note = str.__str__(note)[:NOTE_CAP]  # an exact str: it crosses to a pool's parent
        self._report(float(value), note)


_current: ContextVar[CurrentJob | None] = ContextVar("conveyor_current_job", default=None)


def current_job() -> CurrentJob:
    """The job the calling code runs as; raises ``ConveyorError`` outside a task."""
    job = _current.get()
    if job is None:
        raise ConveyorError("current_job() is only available inside a task run by a worker")
    return job


# The worker sets it twice per job: the ContextVar's own method, not a function around it.
set_current_job = _current.set
