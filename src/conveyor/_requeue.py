"""Requeue: failed, dead and cancelled jobs back on their queue, their retries afresh.

A job's retry count rides in its payload (``Message.attempt``), which brokers never decode.
So each payload is decoded here, its attempt set to 0 and encoded again with the app's
codec, and the broker's ``requeue`` takes the new payload with the id and puts the job back
only if it is still failed, dead or cancelled (one atomic step per job: a job requeued or
purged by someone else meanwhile is left alone; see the port's contract for unique keys
and dependencies).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from . import _events
from ._errors import (
    ConfigurationError,
    JobNotEnded,
    JobNotFound,
    SerializationError,
    ValidationError,
)
from ._events import REQUEUED
from ._message import JobRecord, JobStatus, validate_job_id, validate_queue
from .brokers._port import REQUEUEABLE

if TYPE_CHECKING:
    from ._app import Conveyor

log = logging.getLogger("conveyor")

PAGE = 500  # jobs per page of ``requeue_all``


class _Fresh(msgspec.Struct, frozen=True):
    """One job to requeue: its id, its payload with the retries afresh, what it waits for,
    and its task and queue (for its ``job.requeued`` event)."""

    id: str
    payload: bytes
    depends_on: tuple[str, ...]
    task: str
    queue: str


def _fresh(app: Conveyor, job_id: str, payload: bytes) -> _Fresh:
    try:
        message = app.codec.decode_message(payload)
        if message.workflow:
            from .workflows import waits_for_inputs  # on first use: import conveyor is lean

            if waits_for_inputs(message):
                raise ValidationError(
                    f"cannot requeue job {job_id}: it is a step of a workflow "
                    f"({message.task}) that ended before the steps it follows handed it "
                    "their results, so it would run without them. Send the workflow again "
                    "(build it and call .delay()); its other steps can be requeued"
                )
        # A fresh send: its retries start again, and its wait (conveyor_job_wait_seconds)
        # from now, not from the first send, days ago for a dead letter.
        again = msgspec.structs.replace(message, attempt=0, enqueued_at=app.clock.time())
        payload = app.codec.encode_message(again, capped=False)  # let in once, a retry's way
        return _Fresh(job_id, payload, tuple(message.depends_on), message.task, message.queue)
    except SerializationError as exc:
        raise SerializationError(
            f"cannot requeue job {job_id}: its payload does not decode with this app's "
            f"codec ({exc}), so its retries cannot be reset. Use the app your workers use "
            "(same serializer and secret); a payload written by hand cannot be requeued, "
            "it goes when its record expires"
        ) from exc


def _dependencies_first(jobs: Sequence[_Fresh]) -> list[_Fresh]:
    """The jobs in their order, but a job that depends on another of them after it: the
    broker then finds that one pending again and makes the dependent wait for it, as an
    enqueue of both in that order would."""
    by_id = {j.id: j for j in jobs}
    placed: set[str] = set()
    out: list[_Fresh] = []
    for job in jobs:
        stack = [job]  # depth first, without recursion: a chain may be long
        while stack:
            top = stack[-1]
            if top.id in placed:
                stack.pop()
                continue
            waiting = [by_id[d] for d in top.depends_on if d in by_id and d not in placed]
            if waiting and not any(w in stack for w in waiting):
                stack += waiting
                continue
            placed.add(top.id)
            out.append(stack.pop())
    return out


def _requeue(app: Conveyor, jobs: Sequence[_Fresh]) -> Requeued:
    """Requeue; the ids that went back, in the order given, and each one that stayed with
    the id of the pending job holding its unique key (None: it changed meanwhile)."""
    ordered = _dependencies_first(jobs)
    answers = app.broker.requeue([(j.id, j.payload) for j in ordered])
    found = {j.id: got for j, got in zip(ordered, answers, strict=True)}
    back = [j for j in ordered if found[j.id] == j.id]
    if back and app.events:  # each job this call put back (a requeue answers which)
        now = app.clock.time()
        app._publish(
            [
                _events.job_event("job.requeued", now, j.id, j.task, j.queue, reason=REQUEUED)
                for j in back
            ]
        )
    left = {j.id: found[j.id] for j in jobs if found[j.id] != j.id}
    return Requeued([j.id for j in jobs if j.id not in left], left)


def known(app: Conveyor, job_ids: Sequence[str], done: str) -> tuple[list[str], list[JobRecord]]:
    """The ids, each once, and their records; an unknown one raises, saying nothing was
    ``done`` (requeued, deleted): an operation on ids checks them all before any change."""
    if isinstance(job_ids, str):
        raise TypeError(f"pass a list of job ids, not the single string {job_ids!r}")
    ids = list(dict.fromkeys(validate_job_id(i) for i in job_ids))
    records = app.broker.get(ids)
    for job_id, record in zip(ids, records, strict=True):
        if record is None:
            raise JobNotFound(
                f"no job with id {job_id!r} (unknown, purged or its record expired); "
                f"nothing was {done}"
            )
    return ids, [r for r in records if r is not None]


class Requeued(NamedTuple):
    """What ``requeue_ids`` did: the ids that went back, in the order given, and each one
    left as it was with the id of the pending job holding its unique key (None: it changed
    meanwhile: requeued, deleted, purged or expired by someone else)."""

    back: list[str]
    left: dict[str, str | None]


def requeue(app: Conveyor, job_ids: Sequence[str]) -> int:
    """``app.requeue``: how many of ``requeue_ids`` went back."""
    return len(requeue_ids(app, job_ids).back)


def requeue_ids(app: Conveyor, job_ids: Sequence[str]) -> Requeued:
    """Every id is checked (known, ended, decodable) before any is requeued; a job whose
    unique key another pending job holds stays as it is, as an enqueue would be
    deduplicated."""
    ids, records = known(app, job_ids, "requeued")
    for job_id, record in zip(ids, records, strict=True):
        if record.status not in REQUEUEABLE:
            raise JobNotEnded(job_id, record.status)
    jobs = []
    for job_id in ids:
        payload = app.broker.payload(job_id)
        if payload is None:
            raise JobNotFound(f"job {job_id!r} expired meanwhile; nothing was requeued")
        jobs.append(_fresh(app, job_id, payload))
    return _requeue(app, jobs) if jobs else Requeued([], {})


def requeue_all(app: Conveyor, status: JobStatus, queue: str | None = None) -> int:
    """``app.requeue_all``: how many of ``requeue_all_counts`` went back."""
    return requeue_all_counts(app, status, queue)[0]


def requeue_all_counts(
    app: Conveyor, status: JobStatus, queue: str | None = None
) -> tuple[int, int]:
    """Page through ``entries`` and requeue each page; (how many went back, how many were
    left). A job whose payload this app cannot decode is left where it is, as is one whose
    unique key another pending job holds (each logged); the pages skip them.

    Each job is taken once per call: one requeued here that ends in ``status`` again
    meanwhile (a busy worker runs it and it fails at once) comes back at the top of the
    newest-first listing, ahead of the jobs still to do, and is passed over like those left
    where they were (it was requeued again and again, while workers ran)."""
    if status not in REQUEUEABLE:
        raise ConfigurationError(
            f"cannot requeue {status!r} jobs: requeue_all takes JobStatus.FAILED, DEAD or CANCELLED"
        )
    if queue is not None:
        validate_queue(queue)
    total = left = 0
    skip = 0  # the listing's head that stays; the jobs to do come after it
    seen: set[str] = set()
    while page := app.broker.entries(status, queue, PAGE, skip):
        jobs = []
        for entry in page:
            if entry.id in seen:  # left where it was, or requeued and ended again
                skip += 1
                continue
            seen.add(entry.id)
            try:
                jobs.append(_fresh(app, entry.id, entry.payload))
            except ValidationError as exc:  # undecodable, or a step without its inputs
                log.warning("%s", exc)
                left += 1
                skip += 1
        back, held = _requeue(app, jobs) if jobs else Requeued([], {})
        for job_id, holder in held.items():
            if holder is not None:  # None: it left the listing meanwhile
                log.warning("%s", held_message(job_id, holder))
                left += 1
                skip += 1
        total += len(back)
    return total, left


def held_message(job_id: str, holder: str) -> str:
    """Why a job whose unique key another pending job holds was not requeued."""
    return (
        f"job {job_id} was not requeued: its unique key is held by pending job {holder} (an "
        "enqueue would be deduplicated the same way); requeue it once that job ended"
    )
