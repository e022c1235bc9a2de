"""``conveyor.current_job()``: what a running task knows about its own job."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

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
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.deliveries = deliveries
        self._report = report

    def progress(self, value: float, note: str | None = None) -> None:
        """Report how far the job is, from 0.0 to 1.0, with an optional note.

        Callers see it on ``job.progress`` and in ``conveyor info``. A note is a short
        status line: past ``NOTE_CAP`` characters it is cut."""
        value = float(value)  # a numpy or Decimal number becomes what every broker stores
        if not 0.0 <= value <= 1.0:
            raise ValueError("progress takes a fraction from 0.0 to 1.0")
        if note is not None:
            if not isinstance(note, str):
                raise TypeError(f"a progress note is a str or None, not {type(note).__name__}")
            note = str.__str__(note)[:NOTE_CAP]  # an exact str: it crosses to a pool's parent
        self._report(value, note)


_current: ContextVar[CurrentJob | None] = ContextVar("conveyor_current_job", default=None)


def current_job() -> CurrentJob:
    """The job the calling code runs as; raises ``ConveyorError`` outside a task."""
    job = _current.get()
    if job is None:
        raise ConveyorError("current_job() is only available inside a task run by a worker")
    return job


def set_current_job(job: CurrentJob | None) -> object:
    return _current.set(job)
