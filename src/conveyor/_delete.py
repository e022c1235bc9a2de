"""Delete: jobs gone for good, record, payload and result, as if they had expired.

A queued or scheduled job is cancelled first, as ``Job.cancel`` does (its ``job.cancelled``
event published, the rest of its workflow failed, its dependents counted down), then
deleted, so nothing that waits on it waits forever. An ended one is deleted as it is: a job
that depends on it and still waits for another dependency finds it without a record when it
is released, as after its result TTL ran out (``DependencyFailed``). A running job under its
worker's live lease is left as it is; one whose lease expired (its worker is gone) is
deleted (the rest of its workflow ends, as a cancel before it ran would end it), and the
dead worker's late finish is refused. The broker's ``delete`` does each job
in one atomic step and answers per id (see the port's contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._errors import JobNotEnded, JobNotFound
from ._job import Job
from ._message import JobStatus
from ._requeue import known

if TYPE_CHECKING:
    from ._app import Conveyor


def delete(app: Conveyor, job_ids: Sequence[str]) -> dict[str, JobStatus | None]:
    """``app.delete``: every id is checked (known) before any job is touched; per id, each
    once, the status the job had (deleted) or None (left as it is: ``kept`` says why)."""
    from . import workflows  # workflows builds Jobs: imported late

    ids, records = known(app, job_ids, "deleted")
    running: dict[str, bytes | None] = {}  # payloads, read while there is one
    for job_id, record in zip(ids, records, strict=True):
        if record.status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
            Job(app, job_id, record).cancel()
        elif record.status is JobStatus.RUNNING:
            running[job_id] = app.broker.payload(job_id)
    found = app.broker.delete(ids) if ids else []
    out: dict[str, JobStatus | None] = {}
    for job_id, record, status in zip(ids, records, found, strict=True):
        # One this call cancelled first is reported as it stood when it was asked for.
        cancelled_here = status is JobStatus.CANCELLED and not record.status.terminal
        out[job_id] = record.status if cancelled_here else status
        if status is JobStatus.RUNNING:  # a dead worker's: nobody will finish it now
            workflows.ended_unrun(app, running.get(job_id), "deleted after its worker was gone")
    return out


def kept(app: Conveyor, job_ids: Sequence[str]) -> dict[str, JobNotEnded | JobNotFound]:
    """Why ``delete`` left each of ``job_ids`` as it is, as the error to show, read in one
    call: its worker holds a live lease on it, or it went meanwhile (deleted, purged or
    expired)."""
    out: dict[str, JobNotEnded | JobNotFound] = {}
    for job_id, record in zip(job_ids, app.broker.get(list(job_ids)), strict=True):
        if record is not None and record.status is JobStatus.RUNNING:
            out[job_id] = JobNotEnded(job_id, record.status, action="delete")
        else:
            out[job_id] = JobNotFound(f"job {job_id!r} was deleted, purged or expired meanwhile")
    return out
