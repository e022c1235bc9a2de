"""Delete: jobs gone for good, record, payload and result, as if they had expired.

A running job is its worker's: it is refused (cancel it, and delete it once it ended). A
queued or scheduled one is cancelled first, as ``Job.cancel`` does (its ``job.cancelled``
event published, the rest of its workflow failed, its dependents counted down), then
deleted, so nothing that waits on it waits forever. An ended one is deleted as it is. The
broker's ``delete`` does each job in one atomic step and leaves a job that started running
meanwhile as it is (see the port's contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._errors import JobNotEnded
from ._job import Job
from ._message import JobStatus
from ._requeue import known

if TYPE_CHECKING:
    from ._app import Conveyor


def delete(app: Conveyor, job_ids: Sequence[str]) -> int:
    """``app.delete``: every id is checked (known, not running) before any job is touched;
    returns how many were deleted (one that started running meanwhile is not)."""
    ids, records = known(app, job_ids, "deleted")
    for job_id, record in zip(ids, records, strict=True):
        if record.status is JobStatus.RUNNING:
            raise JobNotEnded(job_id, record.status, action="delete")
    for job_id, record in zip(ids, records, strict=True):
        if not record.status.terminal:
            Job(app, job_id, record).cancel()
    found = app.broker.delete(ids) if ids else []
    return sum(status is not None and status is not JobStatus.RUNNING for status in found)
