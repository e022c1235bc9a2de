"""The broker port: the one interface the worker, the app and the tools drive.

Adapters: ``memory`` (the reference semantics), ``sqlite`` (embedded default), ``redis``
(Streams). ``conveyor.testing.conformance`` checks an adapter against this contract.

Contract, in short:

* ``enqueue`` writes jobs atomically (all of a batch or none) and records each as ``queued``
  (or ``scheduled`` when its ``eta`` is in the future). It is idempotent on the job id: a job
  whose id already exists is not written again (a producer retrying after a timeout cannot
  queue a job twice). A job whose ``key`` matches a job that is still pending (queued,
  scheduled or running) is not written; the existing id is returned. An ``eta`` of
  ``PARKED`` (infinity) keeps the job ``scheduled`` until ``promote`` makes it due: workflows
  park their later steps this way.
* **Dependencies** (``Envelope.depends_on``), in the same atomic step as the enqueue: each
  id must name a job the broker knows, else ``DependencyNotFound`` is raised and nothing
  of the batch is written (a job may depend on jobs earlier in the same batch, not later
  ones). For each dependency that is not terminal yet, the new job's id is added to that
  job's *dependents* and counted; a job with a count above 0 is stored parked (``scheduled``,
  eta ``PARKED``) with that count, else it is placed as usual. Whenever a job becomes
  terminal -- a fenced ``finish`` with a terminal status, ``cancel`` of a queued or
  scheduled job, a cancelled job ending on ``release`` or lease expiry -- or is deleted by
  ``purge``, the same atomic step takes its dependents, counts each one down and makes it
  due (``queued``) when its count reaches 0. A job without dependents pays one key or
  indexed-row lookup for this. A repeated finish (the fence's "already settled") counts
  nothing down again; a cancelled dependent is skipped. Brokers do not judge outcomes: a
  dependent is released whatever its dependencies ended as, and its worker reads their
  records (``workflows.short_circuit``).
* ``fetch`` hands out up to ``count`` jobs from the given queues (but paused ones, see
  ``pause``) under a lease of ``lease`` seconds: higher priority first, FIFO within a
  priority, due scheduled jobs included, and jobs whose lease expired (their worker died)
  reclaimed. Each delivery gets a fresh ``token``, unique for that job (an adapter may
  share one token across a fetched batch, so a delivery is identified by job id and token
  together); ``deliveries`` counts hand-outs. It blocks up to ``block`` seconds when there
  is nothing to hand out, without spinning.
* ``renew``, ``finish``, ``release`` and ``progress`` are *fenced*: they take effect only if
  the delivery's token is still the job's current token (the lease was not taken over), and
  report per delivery whether they did. A stale finish changes nothing. A repeat of a
  finish or release by the same delivery (a client retrying after a lost reply) changes
  nothing and reports True: that delivery's outcome is the one recorded.
* ``finish`` is one atomic step per delivery: remove from the queue, store the state and
  the encoded result with its TTL, wake waiters, and, for a retry, put the job back as
  ``scheduled`` with its new payload; for ``failed`` and ``dead``, keep the payload for
  inspection and requeue.
* ``release`` hands a job back for immediate redelivery (graceful shutdown); it does not
  count as a delivery. A job whose cancel was requested while it ran ends ``cancelled``
  instead when it is released or its lease expires.
* ``cancel`` keeps the cancelled record (and its payload, for ``payload``) for a day, like a
  result, with the reason ``CANCELLED_PENDING``; a running job cancelled and then released
  or abandoned (lease expired) ends with ``CANCELLED_WORKER_STOPPED``.
* ``get`` gives each record's ``deliveries`` (as fetch counts them; 0 again after a retry or
  a requeue) and ``reason`` (the finish's, or the cancel's above; "" while the job is
  pending or after it succeeded).
* ``wait`` blocks until the job is terminal (or the timeout passes) without a sleep loop;
  a result written before ``wait`` starts is returned at once.
* ``entries`` lists one status, a page at a time (``limit`` >= 1 jobs after skipping
  ``offset``), in one fixed order per status, so pages follow each other: queued jobs in
  the order ``fetch`` hands them out (highest priority first, then first in line first);
  scheduled jobs soonest ``eta`` first, then the parked ones (waiting for ``promote`` or
  their dependencies), ties by job id; every other status newest first by ``at`` (when the
  job last changed), ties by job id, highest first. An adapter that indexes ended jobs by
  when their record expires (Redis) gives that order exactly where the jobs of a queue
  and status share one result TTL, and close to it where they do not.
* ``pause(queue)``: ``fetch`` hands out no job of the queue until ``resume(queue)``; the
  rest goes on (enqueue, due scheduled jobs and reclaimed leases become queued, running
  jobs renew and finish, retries are scheduled). Persistent in the broker (a restarted
  worker finds the queue paused), idempotent, and allowed for a queue without jobs.
  ``resume`` wakes fetches blocked on the queue: one takes its jobs within a second.
  ``stats`` lists every paused queue (with ``paused`` set) whether or not it has jobs.
* ``requeue`` puts ended jobs back: for each (job id, new payload), in one atomic step
  per job, a job that is failed, dead or cancelled goes back as a fresh job -- the new
  payload (the app resets its retry count in it: brokers never decode payloads), no
  result, reason, progress, eta or expiry, deliveries counted from 0 -- and its unique key
  and ``depends_on`` count as on enqueue: the key is taken again, unless another pending
  job holds it, and then nothing changes and that job's id is reported (enqueue's
  deduplication); each dependency that has not ended is waited for again (the job is
  parked until the last one ends; an unknown or expired one is not waited for); with none
  to wait for, it goes to the back of its queue at its priority. Per item it reports the
  id of the pending job that now stands for it (its own: requeued; another: deduplicated),
  or None, changing nothing, for an unknown or expired id or a job that is not failed,
  dead or cancelled (queued, scheduled, running, succeeded).
* **Events** (``conveyor._events``; docs/observability.md): opaque bytes the app and the
  worker encode, kept in one capped log per broker that any number of readers follow
  without taking anything out of it. ``publish`` appends a batch; events also ride on
  ``enqueue`` (``events[i]`` is published only if ``envelopes[i]``'s job is written: not
  for an id that exists, nor for one deduplicated by its unique key) and on ``finish``
  (``events`` first, then each outcome's ``Finish.event``, only where that outcome is
  recorded: not for a refused delivery, not again for a repeat) and on ``cancel`` (published
  only if that call cancels a queued or scheduled job), in the same atomic step as the
  change they describe. Without events, nothing is written to the log. The log
  keeps at least the newest ``events_kept`` events and fewer than ``EVENTS_SLACK`` more
  (an adapter that stores several events to a record keeps the whole record that holds
  the oldest one kept): a full log drops its oldest events, never a job, and nothing waits
  for a reader. ``read_events(after, block,
  limit)`` returns up to ``limit`` (cursor, event) pairs in publish order after the
  opaque cursor ``after`` (None: from the oldest kept), blocking up to ``block`` seconds
  while there is none; a cursor older than the oldest kept reads from the oldest kept.
  ``events_tail()`` is the cursor of the newest event: reading after it returns only what
  is published later.
* Time: ``eta``, leases and TTLs are read on the injected clock; ``block`` and ``timeout``
  are real seconds a caller waits. ``fetch`` with ``count=0`` returns at once.
* Nothing from ``redis`` or ``sqlite3`` leaves an adapter: errors become ``BrokerError``.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import msgspec

from .._errors import ConfigurationError, DependencyNotFound
from .._message import (
    Delivery,
    Envelope,
    JobEntry,
    JobRecord,
    JobStatus,
    QueueStats,
    WorkerInfo,
)
from ..stores._port import KeyValue

PARKED = math.inf  # the eta of a job that waits for ``promote``
# How many events a broker keeps by default (docs/observability.md says why this many), and
# fewer than how many more an adapter that stores several events to a record may keep.
EVENTS_KEPT = 10_000
EVENTS_SLACK = 100
# The ended statuses ``requeue`` puts back (a succeeded job keeps its result, not its work).
REQUEUEABLE = frozenset({JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED})
# The reason of a job cancelled by the broker, not by its worker's finish (``Job.cancel``).
# The longest a thread of ``wait_async`` waits at a time (see there).
ASYNC_WAIT_SLICE = 1.0

CANCELLED_PENDING = "cancelled before it ran"
CANCELLED_WORKER_STOPPED = "cancelled while running (its worker stopped)"


def check_page(limit: int, offset: int) -> None:
    """``entries`` takes at least one job per page, after skipping none or more."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ConfigurationError(f"bad limit {limit!r}: list at least 1 job per page")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ConfigurationError(f"bad offset {offset!r}: skip 0 or more jobs")


def check_events(envelopes: Sequence[Envelope], events: Sequence[bytes]) -> None:
    """``enqueue``'s events come one per envelope, or not at all."""
    if events and len(events) != len(envelopes):
        raise ValueError(
            f"enqueue takes one event per envelope or none: {len(events)} events "
            f"for {len(envelopes)} envelopes"
        )


def check_kept(kept: int) -> int:
    """``events_kept``: at least one event."""
    if not isinstance(kept, int) or isinstance(kept, bool) or kept < 1:
        raise ConfigurationError(f"bad events_kept {kept!r}: keep at least 1 event")
    return kept


def bad_cursor(after: object) -> ConfigurationError:
    return ConfigurationError(f"bad event cursor {after!r}: pass one read_events returned")


def event_number(after: str | None) -> int:
    """The event a numbered cursor (memory, SQLite) names; 0 (before the first) for None."""
    if after is None:
        return 0
    if not isinstance(after, str) or not after.isdigit():
        raise bad_cursor(after)
    return int(after)


def check_read(block: float, limit: int) -> None:
    """``read_events`` takes at least one event and a block of zero or more seconds."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ConfigurationError(f"bad limit {limit!r}: read at least 1 event at a time")
    if not block >= 0:
        raise ConfigurationError(f"bad block {block!r}: wait zero or more seconds")


def unknown_dependency(job_id: str, dependency: str) -> DependencyNotFound:
    """The error every adapter raises for a ``depends_on`` id it does not know.

    Not "already done": a record that expired after its result TTL and a typo look the same,
    and running a job whose prerequisite may have failed is the worse surprise."""
    return DependencyNotFound(
        f"job {job_id} depends on {dependency!r}, which is not a known job (never enqueued, "
        "or its record expired after its result TTL); nothing was enqueued. Enqueue the "
        "dependency first, or keep its result longer (result_ttl=)"
    )


class LeaseState(enum.StrEnum):
    OK = "ok"  # still ours, lease extended
    LOST = "lost"  # taken over or finished elsewhere: stop caring about this job
    CANCELLED = "cancelled"  # still ours, but cancel() was called: stop the job


class Finish(msgspec.Struct, frozen=True):
    """How one delivery ends.

    ``status`` is terminal (succeeded, failed, cancelled, dead), or ``scheduled`` for a retry,
    in which case ``retry`` is the envelope to put back (same job id, new payload and eta).
    ``result`` is the encoded ``Outcome``; ``reason`` is kept with failed and dead jobs.
    ``event`` is published with the outcome, only if it is recorded (see the contract).
    """

    delivery: Delivery
    status: JobStatus
    result: bytes | None = None
    result_ttl: float = 86400.0
    retry: Envelope | None = None
    reason: str = ""
    event: bytes | None = None


class Broker(ABC):
    """Abstract broker; see the module docstring for the contract."""

    url: str = ""
    events_kept: int = EVENTS_KEPT  # the event log keeps at least this many (see the contract)

    @property
    @abstractmethod
    def kv(self) -> KeyValue:
        """The key-value store on the same backend (results, locks, cache build on it)."""

    # -- producing -------------------------------------------------------------------------

    @abstractmethod
    def enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()) -> list[str]:
        """Write jobs; return each job's id (the existing one when deduplicated by key).
        ``events``: one per envelope, published only with a job that is written."""

    async def enqueue_async(
        self, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()
    ) -> list[str]:
        return await asyncio.to_thread(self.enqueue, envelopes, events)

    def enqueue_in(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()
    ) -> list[str]:
        """``enqueue`` through the caller's own database ``connection``, inside its open
        transaction (``.options(connection=...)``): only a broker in that database can."""
        raise ConfigurationError(
            f"connection= (enqueue inside your own transaction) needs the PostgreSQL broker "
            f"in the same database; this app's broker is {type(self).__name__}: leave "
            "connection= out, or use postgresql://"
        )

    async def enqueue_in_async(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()
    ) -> list[str]:
        return self.enqueue_in(connection, envelopes, events)

    # -- consuming -------------------------------------------------------------------------

    @abstractmethod
    def fetch(
        self, queues: Sequence[str], consumer: str, count: int, lease: float, block: float
    ) -> list[Delivery]:
        """Hand out up to ``count`` jobs under a lease; block up to ``block`` s if none."""

    @abstractmethod
    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        """Extend leases still owned by these deliveries."""

    @abstractmethod
    def finish(self, outcomes: Sequence[Finish], events: Sequence[bytes] = ()) -> list[bool]:
        """Record outcomes, fenced; True where the delivery still owned the job. ``events``
        are published in the same step, before the recorded outcomes' own."""

    @abstractmethod
    def release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Hand jobs back for immediate redelivery, fenced."""

    @abstractmethod
    def promote(self, job_id: str, payload: bytes) -> bool:
        """Make a parked job due now with a new payload (a workflow step whose inputs are
        ready). False, changing nothing, if the job is not parked: promoting twice is safe."""

    @abstractmethod
    def progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        """Record a running job's progress, fenced."""

    # -- job records -----------------------------------------------------------------------

    @abstractmethod
    def get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Current records; None for an unknown (or expired) id."""

    @abstractmethod
    def wait(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Block until the job is terminal; None if the timeout passes first.

        Raises ``JobNotFound`` for an unknown id.
        """

    async def wait_async(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """``wait`` in a thread, in slices of at most ``ASYNC_WAIT_SLICE`` seconds: a
        cancelled await (``asyncio.wait_for``, a client gone) cannot stop the thread, which
        would otherwise wait until the job ends, and keep the event loop's executor (and
        ``asyncio.run``'s exit) waiting with it. The result still arrives at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = ASYNC_WAIT_SLICE
            if deadline is not None:
                left = min(left, max(deadline - time.monotonic(), 0.0))
            record = await asyncio.to_thread(self.wait, job_id, left)
            if record is not None or (deadline is not None and time.monotonic() >= deadline):
                return record

    @abstractmethod
    def payload(self, job_id: str) -> bytes | None:
        """The job's current payload while it is pending or running, and after it failed,
        died or was cancelled; None for an unknown (or expired) id. A succeeded job's
        record keeps its result; an adapter may drop its payload then (Redis does: it rides
        in the stream entry, deleted at the end). Cancelling a workflow step reads it to
        learn what follows the step."""

    @abstractmethod
    def cancel(self, job_id: str, event: bytes | None = None) -> JobStatus:
        """Cancel a job: a pending one is removed at once, a running one is flagged so its
        worker stops it (seen at the next lease renewal). Returns the status afterwards.
        Raises ``JobNotFound`` for an unknown id. ``event`` is published only if this call
        cancels a queued or scheduled job."""

    # -- operations ------------------------------------------------------------------------

    @abstractmethod
    def stats(self) -> list[QueueStats]:
        """Jobs per status per known queue, and every paused queue, by queue name."""

    @abstractmethod
    def entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int = 0
    ) -> list[JobEntry]:
        """A page of the jobs in a status (of one queue, or all) with their payloads, in the
        status's order (see the contract): ``limit`` (>= 1) jobs after skipping ``offset``."""

    @abstractmethod
    def requeue(self, items: Sequence[tuple[str, bytes]]) -> list[str | None]:
        """Put failed, dead or cancelled jobs back, each ``(job id, new payload)``; per item
        the id of the pending job standing for it (its own, or the unique key's holder), or
        None where nothing changed (unknown, or not failed, dead or cancelled)."""

    @abstractmethod
    def pause(self, queue: str) -> None:
        """Stop handing out the queue's jobs until ``resume`` (persistent, idempotent)."""

    @abstractmethod
    def resume(self, queue: str) -> None:
        """Hand out the queue's jobs again, waking fetches blocked on it (idempotent)."""

    @abstractmethod
    def paused(self) -> list[str]:
        """The paused queues, by name."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every queued and scheduled job of a queue; returns how many.

        Each deleted job's dependents are counted down as its ending would (same atomic
        step on SQLite; on Redis per script call, the calls looping until nothing is left):
        one whose count reaches 0 becomes due, and its worker then finds the dependency
        without a record. A dependent in the purged queue itself is deleted by the same
        purge (and counted), whether or not it was released first."""

    @abstractmethod
    def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Announce a live worker; it disappears from ``workers()`` ``ttl`` s after the last."""

    @abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """Live workers."""

    @abstractmethod
    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker's announcement (clean stop)."""

    def warnings(self) -> list[str]:
        """What an operator must know about the broker's setup, one line each, saying what
        to do: settings under which it loses jobs without a word (Redis with an evicting
        ``maxmemory-policy``), or a broker that refuses new jobs now (a full Redis). Empty
        when all is well. Read at a worker's start, and by ``conveyor info`` and ``ping``;
        raises ``BrokerError`` when the broker cannot be reached."""
        return []

    # -- events ----------------------------------------------------------------------------

    @abstractmethod
    def publish(self, events: Sequence[bytes]) -> None:
        """Append events to the capped event log, in order, in one step."""

    @abstractmethod
    def read_events(self, after: str | None, block: float, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` (cursor, event) pairs published after the cursor ``after`` (None:
        from the oldest kept), oldest first; blocks up to ``block`` s while there is none."""

    @abstractmethod
    def events_tail(self) -> str:
        """The cursor of the newest event kept (reading after it returns later ones only)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
