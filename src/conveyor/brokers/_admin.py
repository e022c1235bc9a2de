"""The broker's operations half: what the CLI, the dashboard and ``app.requeue`` read and do.

None of it is on the worker's hot path (``_port`` is). Contract, in short:

* ``stats`` counts the jobs of each known queue per status, and lists every paused queue
  (with ``paused`` set) whether or not it has jobs, by queue name.
* ``entries`` lists one status, a page at a time (``limit`` >= 1 jobs after skipping
  ``offset``), in one fixed order per status, so pages follow each other: queued jobs in
  the order ``fetch`` hands them out (highest priority first, then first in line first);
  scheduled jobs soonest ``eta`` first, then the parked ones (waiting for ``promote`` or
  their dependencies), ties by job id; every other status newest first by ``at`` (when the
  job last changed), ties by job id, highest first. An adapter that indexes ended jobs by
  when their record expires (Redis, which pages them by rank in that index) gives that
  order exactly where the jobs of a status share one result TTL, and close to it where
  they do not (a job kept longer is listed as if it had ended later).
* ``requeue`` puts ended jobs back: for each (job id, new payload), in one atomic step
  per job, a job that is failed, dead or cancelled (``REQUEUEABLE``) goes back as a fresh
  job -- the new payload (the app resets its retry count in it: brokers never decode
  payloads), no result, reason, progress, eta or expiry, deliveries counted from 0 -- and
  its unique key and ``depends_on`` count as on enqueue: the key is taken again, unless
  another pending job holds it, and then nothing changes and that job's id is reported
  (enqueue's deduplication); each dependency that has not ended is waited for again (the
  job is parked until the last one ends; an unknown or expired one is not waited for);
  with none to wait for, it goes to the back of its queue at its priority. Per item it
  reports the id of the pending job that now stands for it (its own: requeued; another:
  deduplicated), or None, changing nothing, for an unknown or expired id or a job in any
  other status (queued, scheduled, running -- a cancel requested or not -- succeeded).
* ``pause(queue)``: ``fetch`` hands out no job of the queue until ``resume(queue)``; the
  rest goes on (enqueue, due scheduled jobs and reclaimed leases become queued, running
  jobs renew and finish, retries are scheduled). Persistent in the broker (a restarted
  worker finds the queue paused), idempotent, and allowed for a queue without jobs.
  ``resume`` wakes fetches blocked on the queue: one takes its jobs within a second.
  ``paused()`` lists the queues ``stats`` marks paused.
* ``purge(queue)`` deletes every queued and scheduled job of a queue and returns how many.
  Each deleted job's dependents are counted down as its ending would (same atomic step on
  SQLite; on Redis per script call, the calls looping until nothing is left): one whose
  count reaches 0 becomes due, and its worker then finds the dependency without a record.
  A dependent in the purged queue itself is deleted by the same purge (and counted),
  whether or not it was released first.
* ``delete(ids)`` deletes jobs, each in one atomic step: the record, its payload and its
  result go, as if it had expired. Per id it reports the status the job had (deleted), or
  None where nothing was deleted: an unknown or expired id (an id named twice is gone the
  second time), or a running job under a live lease, left exactly as it was (a cancel
  requested or not: its worker owns it; cancel it, and delete it once it ended). A running
  job whose lease expired (its worker is gone, and no fetch reclaimed it yet) is deleted:
  its delivery's fence then refuses the late ``finish``, ``renew`` or ``release`` of the
  dead worker, as for any job without a record. A queued, scheduled or such a running job
  (parked ones too) goes as ``purge`` takes it: its unique key is free at once, its
  dependents are counted down as its ending would (one whose count reaches 0 becomes due,
  and its worker then finds the dependency without a record), its own dependencies forget
  it, and whoever waits for it is woken (``wait`` raises ``JobNotFound``). An ended job is
  deleted as it is: a dependent still waiting for another of its dependencies has counted
  it down already, and when it is released its worker finds this one without a record, as
  after its result TTL ran out (``DependencyFailed``, unless it allows failed
  dependencies); a later ``depends_on`` naming it is refused as an unknown id.
* ``workers`` lists the workers whose last ``heartbeat`` has not run out.
* ``read_events(after, block, limit)`` returns up to ``limit`` (cursor, event) pairs in
  publish order after the cursor ``after`` (None: from the oldest kept), blocking up to
  ``block`` seconds while there is none; a cursor older than the oldest kept reads from
  the oldest kept. A cursor is the event's number, as a string (events are numbered from
  1 in publish order, and never again). ``events_tail()`` is the cursor of the newest
  event: reading after it returns only what is published later.
* ``warnings()``: what an operator must know about the broker's setup, one line each,
  saying what to do: settings under which it loses jobs without a word (Redis with an
  evicting ``maxmemory-policy``), or a broker that refuses new jobs now (a full Redis).
  Empty when all is well. Read at a worker's start, and by ``conveyor info`` and ``ping``;
  raises ``BrokerError`` when the broker cannot be reached.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence

from .._message import JobEntry, JobStatus, QueueStats, WorkerInfo, validate_queue
from ._base import (
    BrokerBase,
    Watch,
    check_ids,
    check_page,
    check_read,
    check_status,
    event_number,
)

Events = list[tuple[str, bytes]]


def grouped_stats(
    counts: Iterable[tuple[str, str, int]], paused: Iterable[str]
) -> list[QueueStats]:
    """``_stats`` from (queue, status, count) rows and the paused queues' names, for an
    adapter that counts with SQL's ``GROUP BY queue, status``."""
    by_queue = {q: QueueStats(q, paused=True) for q in paused}
    for queue, status, n in counts:
        setattr(by_queue.setdefault(queue, QueueStats(queue)), JobStatus(status).value, n)
    return list(by_queue.values())


class Admin(BrokerBase):
    """The operations half of ``Broker``: public methods that check and call the
    primitives below (see the module docstring for the contract)."""

    def stats(self) -> list[QueueStats]:
        """Jobs per status per known queue, and every paused queue, by queue name."""
        with self._errors:
            return sorted(self._stats(), key=lambda s: s.queue)

    def entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int = 0
    ) -> list[JobEntry]:
        """A page of the jobs in a status (of one queue, or all) with their payloads, in the
        status's order: ``limit`` (>= 1) jobs after skipping ``offset``."""
        status = check_status(status)
        if queue is not None:
            validate_queue(queue)
        check_page(limit, offset)
        with self._errors:
            return self._entries(status, queue, limit, offset)

    def requeue(self, items: Sequence[tuple[str, bytes]]) -> list[str | None]:
        """Put failed, dead or cancelled jobs back, each ``(job id, new payload)``; per item
        the id of the pending job standing for it (its own, or the unique key's holder), or
        None where nothing changed (unknown, or not failed, dead or cancelled)."""
        items = list(zip(check_ids([i for i, _ in items]), [p for _, p in items], strict=True))
        if not items:
            return []
        with self._errors:
            return self._requeue(items)

    def pause(self, queue: str) -> None:
        """Stop handing out the queue's jobs until ``resume`` (persistent, idempotent)."""
        validate_queue(queue)
        with self._errors:
            self._pause(queue)

    def resume(self, queue: str) -> None:
        """Hand out the queue's jobs again, waking fetches blocked on it (idempotent)."""
        validate_queue(queue)
        with self._errors:
            self._resume(queue)

    def paused(self) -> list[str]:
        """The paused queues, by name (those ``stats`` marks paused)."""
        return [s.queue for s in self.stats() if s.paused]

    def purge(self, queue: str) -> int:
        """Delete every queued and scheduled job of a queue; returns how many."""
        validate_queue(queue)
        with self._errors:
            return self._purge(queue)

    def delete(self, job_ids: Sequence[str]) -> list[JobStatus | None]:
        """Delete jobs, records and results; per id the status the job had (deleted), or
        None (unknown, expired, or running under a live lease: left as it is)."""
        ids = check_ids(job_ids)
        if not ids:
            return []
        with self._errors:
            return self._delete(ids)

    def workers(self) -> list[WorkerInfo]:
        """Live workers."""
        with self._errors:
            return self._workers()

    def read_events(self, after: str | None, block: float, limit: int) -> Events:
        """Up to ``limit`` (cursor, event) pairs published after the cursor ``after`` (None:
        from the oldest kept), oldest first; blocks up to ``block`` s while there is none."""
        check_read(block, limit)
        start = event_number(after)
        deadline = time.monotonic() + block
        with self._errors, self._read_events(start, limit) as watch:
            found = watch.look()
            while not found:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                found = watch.sleep_then_look(left)
            return found

    def events_tail(self) -> str:
        """The cursor of the newest event kept (reading after it returns later ones only)."""
        with self._errors:
            return str(self._events_tail())

    def warnings(self) -> list[str]:
        """What an operator must know about the broker's setup (see the contract)."""
        with self._errors:
            return self._warnings()

    # -- the primitives an adapter implements -----------------------------------------------

    @abstractmethod
    def _stats(self) -> list[QueueStats]:
        """Every queue with jobs (in any status, live records only) and every paused one."""

    @abstractmethod
    def _entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int
    ) -> list[JobEntry]:
        """The page, in the status's order (arguments checked)."""

    @abstractmethod
    def _requeue(self, items: list[tuple[str, bytes]]) -> list[str | None]:
        """Each job back if it is in ``REQUEUEABLE``, in one atomic step per job."""

    @abstractmethod
    def _pause(self, queue: str) -> None: ...

    @abstractmethod
    def _resume(self, queue: str) -> None:
        """Wakes the fetches blocked on the queue."""

    @abstractmethod
    def _purge(self, queue: str) -> int: ...

    @abstractmethod
    def _delete(self, job_ids: list[str]) -> list[JobStatus | None]:
        """Each job deleted unless it is running under a live lease, in one atomic step per
        job: the status it had, or None where nothing changed (unknown, expired, leased)."""

    @abstractmethod
    def _workers(self) -> list[WorkerInfo]: ...

    @abstractmethod
    def _read_events(self, start: int, limit: int) -> Watch[Events]:
        """A watch whose looks return up to ``limit`` (cursor, event) pairs of the events
        numbered above ``start``, oldest first (``_eventlog.numbered`` cuts records)."""

    @abstractmethod
    def _events_tail(self) -> int:
        """The number of the newest event ever published (0: none yet)."""

    def _warnings(self) -> list[str]:
        """Nothing to warn about, by default."""
        return []
