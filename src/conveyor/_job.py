"""``Job[R]``: a handle on one job, with the ``concurrent.futures.Future`` contract.

Waiting goes through ``Broker.wait``, which blocks on the broker's own notification, so a
result reaches the caller within milliseconds of being stored and nothing sleeps in a loop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._checks import seconds
from ._depends import DEPENDENCY_FAILED
from ._errors import (
    DependencyFailed,
    JobCancelled,
    JobDead,
    JobNotFound,
    SerializationError,
    TaskFailed,
)
from ._message import JobRecord, JobStatus

if TYPE_CHECKING:
    from ._app import Conveyor

R = TypeVar("R")


class Job(Generic[R]):
    """A handle on one job. A workflow's ``delay()`` returns the handle of its last step,
    which also knows every step (``steps``), so ``cancel`` ends the whole workflow."""

    __slots__ = ("_app", "_record", "id", "steps")

    def __init__(
        self,
        app: Conveyor,
        job_id: str,
        record: JobRecord | None = None,
        *,
        steps: tuple[str, ...] = (),
    ) -> None:
        self._app = app
        self.id = job_id
        """The job's id: what ``app.job(id)`` and ``conveyor job ID`` take."""
        self._record = record if record is not None and record.status.terminal else None
        self.steps = steps

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _fresh(self) -> JobRecord:
        """The job's record as the broker has it now. An ended job can run again (``conveyor
        requeue``, ``app.requeue``), so an ended record seen before is only the answer once
        the broker has forgotten the job (its result expired or it was purged)."""
        record = self._app.broker.get([self.id])[0]
        if record is None:
            if self._record is not None:
                return self._record
            raise JobNotFound(f"no job with id {self.id!r} (unknown, purged or its result expired)")
        self._record = record if record.status.terminal else None
        return record

    @property
    def status(self) -> JobStatus:
        """The job's status now, read from the broker (once it has ended, it is kept)."""
        return self._fresh().status

    @property
    def progress(self) -> tuple[float | None, str | None]:
        """The last progress the running task reported: (fraction, note)."""
        record = self._fresh()
        return record.progress, record.progress_note

    def done(self) -> bool:
        """True once the job has ended: succeeded, failed, cancelled or dead."""
        return self._fresh().status.terminal

    def _wait(self, timeout: float | None) -> JobRecord:
        try:
            record = self._app.broker.wait(self.id, _timeout(timeout))
        except JobNotFound:
            if self._record is None:
                raise
            return self._record  # ended, and forgotten by the broker since
        return self._ended(record, timeout)

    async def _wait_async(self, timeout: float | None) -> JobRecord:
        try:
            broker = await self._app._abroker()
            record = await broker.wait_async(self.id, _timeout(timeout))
        except JobNotFound:
            if self._record is None:
                raise
            return self._record
        return self._ended(record, timeout)

    def _ended(self, record: JobRecord | None, timeout: float | None) -> JobRecord:
        if record is None:
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        self._record = record
        return record

    def _unpack(self, record: JobRecord) -> R:
        error = self._error(record)
        if error is not None:
            raise error
        outcome = self._app.codec.decode_outcome(record.result) if record.result else None
        return cast(R, outcome.value if outcome is not None else None)

    def _error(self, record: JobRecord) -> Exception | None:
        if record.status is JobStatus.SUCCEEDED:
            return None
        try:
            outcome = self._app.codec.decode_outcome(record.result) if record.result else None
        except SerializationError as exc:
            # Written by a worker of another serializer or secret: often the very reason a
            # job was dead-lettered, which its record keeps as text.
            if record.status in (JobStatus.DEAD, JobStatus.CANCELLED) and record.reason:
                outcome = None
            else:
                raise SerializationError(
                    f"cannot read how job {self.id} ended: {exc}. Its worker's app has "
                    "another serializer or secret than this one: give both the same"
                ) from exc
        reason = (outcome.reason if outcome else record.reason) or ""
        if record.status is JobStatus.CANCELLED:
            return JobCancelled(f"job {self.id} was cancelled{': ' + reason if reason else ''}")
        if record.status is JobStatus.DEAD:
            return JobDead(reason or "unknown reason", job_id=self.id)
        err = outcome.error if outcome else None
        if err is None:
            return TaskFailed("UnknownError", reason or "no error recorded", job_id=self.id)
        kind = DependencyFailed if err.type == DEPENDENCY_FAILED else TaskFailed
        return kind(err.type, err.message, err.traceback, job_id=self.id)

    def result(self, timeout: float | None = None) -> R:
        """The task's return value; raises ``TaskFailed``, ``JobCancelled``, ``JobDead`` or
        ``TimeoutError`` (the job is still pending after ``timeout`` seconds)."""
        return self._unpack(self._wait(timeout))

    def exception(self, timeout: float | None = None) -> Exception | None:
        """The error the job ended with, or None if it succeeded."""
        return self._error(self._wait(timeout))

    async def result_async(self, timeout: float | None = None) -> R:
        """``result`` for asyncio code, waiting without blocking the event loop; ``await job``
        is the same without a timeout."""
        return self._unpack(await self._wait_async(timeout))

    def __await__(self) -> Generator[Any, None, R]:
        return self.result_async().__await__()

    def cancel(self) -> bool:
        """Cancel the job. A queued or scheduled job is removed at once; a running one (or
        one its worker holds for a free slot) is stopped by its worker at its next lease
        renewal, at least once a second. True if the job is cancelled (or being cancelled)
        after the call, also when an earlier cancel did it; False if it had ended otherwise.
        A running job that ends before its worker hears of the cancel keeps its outcome.

        A workflow step's cancel ends the rest of its workflow (later steps of its chain
        fail with ``JobCancelled``; its chord's callback gets the error). The handle a
        workflow's ``delay()`` returns cancels every step that has not ended, last first."""
        if self.steps:
            return self._cancel_steps()
        try:
            return self._cancel(self.id)
        except JobNotFound:
            if self._record is None:
                raise
            return self._record.status is JobStatus.CANCELLED  # ended, and forgotten since

    def _cancel(self, job_id: str) -> bool:
        from . import workflows  # workflows builds Jobs: imported late

        status = self._app.broker.cancel(job_id, self._app._cancel_event(job_id))
        if status is JobStatus.CANCELLED:
            workflows.cancelled(self._app, job_id)
        return status in (JobStatus.CANCELLED, JobStatus.RUNNING)

    def _cancel_steps(self) -> bool:
        # Last first: a step ending meanwhile then finds what follows it already cancelled.
        hit = False
        for job_id in reversed(self.steps):
            with contextlib.suppress(JobNotFound):  # ended long ago: its record expired
                hit = self._cancel(job_id) or hit
        return hit

    def add_done_callback(self, fn: Callable[[Job[R]], object]) -> None:
        """Call ``fn(job)`` once the job has ended (at once if it already has), from a
        background thread."""
        try:
            ended = self.done()
        except JobNotFound:
            ended = True  # forgotten by the broker: nothing left to wait for
        if ended:
            fn(self)
            return

        def waiter() -> None:
            with contextlib.suppress(JobNotFound):
                self._wait(None)
            fn(self)

        threading.Thread(target=waiter, name=f"conveyor-callback-{self.id}", daemon=True).start()


def _timeout(timeout: float | None) -> float | None:
    """How long to wait for the result: None (as long as it takes) or 0 or more seconds."""
    if timeout is None:
        return None
    example = "timeout=30, or timeout=None to wait as long as it takes"
    return seconds("timeout", timeout, example=example)
