"""A Conveyor job read as the Tasks framework's ``TaskResult``.

=================================  ============================================
Conveyor job status                ``TaskResultStatus``
=================================  ============================================
queued, scheduled                  READY (scheduled: a ``run_after`` not reached
                                   yet, or a retry waiting for its backoff)
running                            RUNNING
succeeded                          SUCCESSFUL
failed                             FAILED, ``errors``: the task's exception
dead                               FAILED, ``errors``: ``conveyor.JobDead``
cancelled                          FAILED, ``errors``: ``conveyor.JobCancelled``
=================================  ============================================

What is read from where: the task, arguments and ``enqueued_at`` from the job's payload
while the broker keeps it (pending, running, failed, dead, cancelled; succeeded on memory
and SQLite), else from the record the runner returned (a succeeded job on Redis, where
``enqueued_at`` is then unknown); ``finished_at`` is when the job ended; ``started_at``
and ``worker_ids`` are known for a successful task (the runner records them); a failed
one has one attempt per run, whose worker Conveyor does not keep (an empty string).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.utils import timezone

from ..._errors import JobCancelled, JobDead
from ..._message import JobRecord, JobStatus, Message, Outcome
from ._compat import (
    FAILED,
    READY,
    RUNNING,
    SUCCESSFUL,
    Task,
    TaskError,
    TaskResult,
)
from ._runner import RESULT_KEYS

STATUSES = {
    JobStatus.QUEUED: READY,
    JobStatus.SCHEDULED: READY,
    JobStatus.RUNNING: RUNNING,
    JobStatus.SUCCEEDED: SUCCESSFUL,
    JobStatus.FAILED: FAILED,
    JobStatus.DEAD: FAILED,
    JobStatus.CANCELLED: FAILED,
}


def ran(outcome: Outcome | None) -> dict[str, Any] | None:
    """The record a Django task's runner returned, if ``outcome`` holds one."""
    value = outcome.value if outcome is not None else None
    if isinstance(value, dict) and tuple(value) == RESULT_KEYS:
        return value
    return None


def task_result(
    alias: str,
    task: Task[Any, Any],
    record: JobRecord,
    message: Message | None,
    outcome: Outcome | None,
) -> TaskResult[Any]:
    """The framework's view of the job ``record`` of ``task`` (see the module docstring)."""
    status = STATUSES[record.status]
    done = ran(outcome) if record.status is JobStatus.SUCCEEDED else None
    args: list[Any] = message.args if message is not None else (done or {}).get("args", [])
    kwargs: dict[str, Any] = (
        message.kwargs if message is not None else (done or {}).get("kwargs", {})
    )
    started = moment(done["started_at"]) if done else None
    workers = [""] * _attempts(record.status, message)
    if done:
        workers[-1] = str(done["worker_id"])
    result: TaskResult[Any] = TaskResult(
        task=task,
        id=record.id,
        status=status,
        enqueued_at=moment(message.enqueued_at) if message is not None else None,
        started_at=started,
        last_attempted_at=started,
        finished_at=moment(record.updated_at) if record.status.terminal else None,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=_errors(record, outcome),
        worker_ids=workers,
    )
    if done is not None:
        object.__setattr__(result, "_return_value", done["return_value"])
    return result


def _attempts(status: JobStatus, message: Message | None) -> int:
    """How many times the task started: its retries so far, and the run now or last."""
    if message is None:  # a succeeded job whose payload is gone: it ran
        return 1
    ran_now = status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED)
    return message.attempt + (1 if ran_now else 0)


def _errors(record: JobRecord, outcome: Outcome | None) -> list[TaskError]:
    error = outcome.error if outcome is not None else None
    if record.status is JobStatus.FAILED or (record.status is JobStatus.DEAD and error):
        if error is None:
            return [TaskError(exception_class_path="builtins.Exception", traceback=record.reason)]
        return [TaskError(exception_class_path=error.type, traceback=error.traceback)]
    reason = (outcome.reason if outcome is not None else None) or record.reason
    if record.status is JobStatus.DEAD:
        return [TaskError(exception_class_path=_path(JobDead), traceback=reason)]
    if record.status is JobStatus.CANCELLED:
        return [TaskError(exception_class_path=_path(JobCancelled), traceback=reason)]
    return []


def _path(kind: type[BaseException]) -> str:
    return f"conveyor.{kind.__name__}"  # what conveyor exports it as: importable


def moment(timestamp: float) -> dt.datetime:
    """A Unix time as Django holds times: aware in UTC with ``USE_TZ``, else naive in the
    local time of ``TIME_ZONE``."""
    aware = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return aware if settings.USE_TZ else timezone.make_naive(aware)
