"""The broker port: what the worker and the app drive, and the ``Broker`` every adapter is.

``Broker`` is both halves of the port: the hot path here (enqueue, fetch, renew, finish,
release, promote, progress, get, wait, payload, cancel, heartbeat, publish) and the
operations the CLI and the dashboard use (``_admin``: stats, entries, requeue, pause,
purge, workers, read_events, ...). Its public methods check their arguments and call an
adapter's primitives (``_base``); an adapter subclasses ``Broker`` and implements those
(docs/adding-a-broker.md). Adapters: ``memory`` (the reference semantics), ``sqlite``
(embedded default), ``redis`` (Streams); ``brokers._registry`` opens them by URL scheme.
``conveyor.testing.conformance`` and ``conveyor.testing.model`` check an adapter against
this contract.

Contract of the hot path, in short:

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
* ``cancel`` keeps the cancelled record (and its payload, for ``payload``) for
  ``CANCELLED_TTL`` (a day, like a result), with the reason ``CANCELLED_PENDING``; a
  running job cancelled and then released or abandoned (lease expired) ends with
  ``CANCELLED_WORKER_STOPPED``.
* ``get`` gives each record's ``deliveries`` (as fetch counts them; 0 again after a retry or
  a requeue) and ``reason`` (the finish's, or the cancel's above; "" while the job is
  pending or after it succeeded).
* ``wait`` blocks until the job is terminal (or the timeout passes) without a sleep loop;
  a result written before ``wait`` starts is returned at once.
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
  for a reader (``read_events``, in ``_admin``).
* ``heartbeat`` announces a live worker, until ``ttl`` seconds after the last one or
  ``forget_worker``; ``workers`` (``_admin``) lists them.
* Time: ``eta``, leases and TTLs are read on the injected clock; ``block`` and ``timeout``
  are real seconds a caller waits. ``fetch`` with ``count=0`` returns at once.
* Nothing from ``redis`` or ``sqlite3`` leaves an adapter: errors become ``BrokerError``
  (each adapter's ``_errors``, around every primitive).
* Checked before a primitive runs, the same on every adapter (``_base``): envelopes (type,
  job id, queue, priority, dependency ids), fetch's queues, entries' status, queue and page,
  requeue's ids, the queue of pause, resume and purge, event cursors, limits and blocks.
"""

from __future__ import annotations

import asyncio
import enum
import math
import threading
import time
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import msgspec

from .._errors import ConfigurationError
from .._message import Delivery, Envelope, JobRecord, JobStatus, WorkerInfo, new_job_id
from ..stores._port import KeyValue
from ._admin import Admin
from ._base import (
    CANCELLED_PENDING,
    CANCELLED_TTL,
    CANCELLED_WORKER_STOPPED,
    EVENTS_KEPT,
    EVENTS_SLACK,
    PARKED,
    REQUEUEABLE,
    AsyncWatch,
    Watch,
    check_envelopes,
    check_events,
    check_kept,
    check_lease,
    check_queues,
    job_not_found,
    purged_while_waiting,
)

# The longest a thread of ``wait_async`` waits at a time, and how many such threads a broker
# runs at most (see ``_wait_in_threads``).
ASYNC_WAIT_SLICE = 1.0
ASYNC_WAIT_THREADS = 64

__all__ = [  # the port's names; the constants and check_kept are _base's, named here too
    "CANCELLED_PENDING",
    "CANCELLED_TTL",
    "CANCELLED_WORKER_STOPPED",
    "EVENTS_KEPT",
    "EVENTS_SLACK",
    "PARKED",
    "REQUEUEABLE",
    "Broker",
    "Claimed",
    "Finish",
    "LeaseState",
    "check_kept",
]


class LeaseState(enum.StrEnum):
    OK = "ok"  # still ours, lease extended
    LOST = "lost"  # taken over or finished elsewhere: stop caring about this job
    CANCELLED = "cancelled"  # still ours, but cancel() was called: stop the job


class Finish(msgspec.Struct, frozen=True, gc=False):
    """How one delivery ends.

    ``status`` is terminal (succeeded, failed, cancelled, dead), or ``scheduled`` for a retry,
    in which case ``retry`` is the envelope to put back (same job id, new payload and eta).
    ``result`` is the encoded ``Outcome``; ``reason`` is kept with failed and dead jobs.
    ``event`` is published with the outcome, only if it is recorded (see the contract).

    Not tracked by the garbage collector (``gc=False``, as ``Delivery`` and ``Envelope``):
    it holds only those two, bytes, strings, a float and an enum member, so it cannot be
    part of a reference cycle, and a worker makes one per job.
    """

    delivery: Delivery
    status: JobStatus
    result: bytes | None = None
    result_ttl: float = 86400.0
    retry: Envelope | None = None
    reason: str = ""
    event: bytes | None = None


Claimed = tuple[list[Delivery], float | None]  # a fetch's look: deliveries, next due in (s)


_WAIT_THREADS_LOCK = threading.Lock()


class Broker(Admin):
    """A broker: the hot path here, the operations in ``Admin``; see the module docstring
    for the contract and ``_base`` for how an adapter plugs in."""

    @property
    @abstractmethod
    def kv(self) -> KeyValue:
        """The key-value store on the same backend (results, locks, cache build on it)."""

    # How many shards the broker spreads its jobs over (a sharded Redis prefix: several;
    # every other broker: one). Priority and FIFO order hold among the jobs of one shard.
    shards: int = 1

    def shard_of(self, job_id: str) -> int:
        """The shard that holds (or would hold) the job, 0 to ``shards - 1``."""
        return 0

    # -- producing -------------------------------------------------------------------------

    def new_job_id(
        self, key: str | None = None, depends_on: Sequence[str] = (), fixed: str | None = None
    ) -> str:
        """A fresh job id for a job with this unique ``key`` and these dependencies. The
        app and workflows mint ids here, so a broker that spreads jobs over shards can
        place each one (``redis+cluster://...?shards=``, docs/cluster.md): its id says
        where. A fresh time-sorted id by default. ``fixed``: an id made elsewhere (a
        periodic job's, the same in every scheduler), returned as it is, or with what
        places it beside its key or dependencies."""
        return fixed or new_job_id()

    def enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()) -> list[str]:
        """Write jobs; return each job's id (the existing one when deduplicated by key).
        ``events``: one per envelope, published only with a job that is written."""
        if not _checked(envelopes, events):
            return []
        with self._errors:
            return self._enqueue(envelopes, events)

    async def enqueue_async(
        self, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()
    ) -> list[str]:
        if not _checked(envelopes, events):
            return []
        async with self._errors:
            return await self._enqueue_async(envelopes, events)

    def enqueue_in(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()
    ) -> list[str]:
        """``enqueue`` through the caller's own database ``connection``, inside its open
        transaction (``.options(connection=...)``): the jobs commit or roll back with the
        caller's writes. Only a broker in that database can; the others refuse, saying so."""
        if not _checked(envelopes, events):
            return []
        with self._errors:
            return self._enqueue_in(connection, envelopes, events)

    async def enqueue_in_async(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()
    ) -> list[str]:
        if not _checked(envelopes, events):
            return []
        async with self._errors:
            return await self._enqueue_in_async(connection, envelopes, events)

    # -- consuming -------------------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], consumer: str, count: int, lease: float, block: float
    ) -> list[Delivery]:
        """Hand out up to ``count`` jobs under a lease; block up to ``block`` s if none."""
        check_lease(lease, block)
        queues = check_queues(queues)
        if count <= 0 or not queues:
            return []
        deadline = time.monotonic() + block
        with self._errors, self._fetch(queues, consumer, count, lease) as watch:
            got, due_in = watch.look()
            while not got:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                got, due_in = watch.sleep_then_look(self._idle_pause(left, due_in))
            return got

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        """Extend leases still owned by these deliveries."""
        check_lease(lease)
        if not deliveries:
            return []
        with self._errors:
            return self._renew(deliveries, lease)

    def finish(self, outcomes: Sequence[Finish], events: Sequence[bytes] = ()) -> list[bool]:
        """Record outcomes, fenced; True where the delivery still owned the job. ``events``
        are published in the same step, before the recorded outcomes' own."""
        if not outcomes:
            self.publish(events)
            return []
        check_envelopes([f.retry for f in outcomes if f.retry is not None])
        with self._errors:
            return self._finish(outcomes, events)

    def release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Hand jobs back for immediate redelivery, fenced."""
        if not deliveries:
            return []
        with self._errors:
            return self._release(deliveries)

    def promote(self, job_id: str, payload: bytes) -> bool:
        """Make a parked job due now with a new payload (a workflow step whose inputs are
        ready). False, changing nothing, if the job is not parked: promoting twice is safe."""
        with self._errors:
            return self._promote(job_id, payload)

    def progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        """Record a running job's progress, fenced."""
        with self._errors:
            return self._progress(delivery, value, note)

    # -- job records -----------------------------------------------------------------------

    def get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Current records; None for an unknown (or expired) id."""
        if not job_ids:
            return []
        with self._errors:
            return self._get(job_ids)

    def wait(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Block until the job is terminal; None if the timeout passes first.

        Raises ``JobNotFound`` for an unknown id, or one purged while waited for.
        """
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        with self._errors, self._wait(job_id) as watch:
            record = watch.look()
            if record is None:
                raise job_not_found(job_id)
            while not record.status.terminal:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                record = watch.sleep_then_look(left)
                if record is None:
                    raise purged_while_waiting(job_id)
            return record

    async def wait_async(self, job_id: str, timeout: float | None) -> JobRecord | None:
        watch = self._wait_async(job_id)
        if watch is None:  # no asyncio path of its own: threads wait
            return await self._wait_in_threads(job_id, timeout)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        async with self._errors, watch:
            record = await watch.look()
            if record is None:
                raise job_not_found(job_id)
            while not record.status.terminal:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                record = await watch.sleep_then_look(left)
                if record is None:
                    raise purged_while_waiting(job_id)
            return record

    async def _wait_in_threads(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """``wait`` in a thread, in slices of at most ``ASYNC_WAIT_SLICE`` seconds: a
        cancelled await (``asyncio.wait_for``, a client gone) cannot stop the thread, which
        would otherwise wait until the job ends, and keep the event loop's executor (and
        ``asyncio.run``'s exit) waiting with it. The result still arrives at once.

        The threads are the broker's own (``ASYNC_WAIT_THREADS`` at most), not the loop's
        default executor, which the loop's enqueues take (``_enqueue_async``): a hundred
        waits there held every enqueue up for as many seconds. Beyond that many waits at
        once, each waits its turn for a slice."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            left = min(ASYNC_WAIT_SLICE, max(deadline - time.monotonic(), 0.0))
            try:
                waited = loop.run_in_executor(self._wait_threads(), self.wait, job_id, left)
            except RuntimeError:  # closed between the two: the threads of the next pool
                waited = loop.run_in_executor(self._wait_threads(), self.wait, job_id, left)
            record = await waited
            if record is not None or time.monotonic() >= deadline:
                return record

    def _wait_threads(self) -> ThreadPoolExecutor:
        with _WAIT_THREADS_LOCK:
            pool: ThreadPoolExecutor | None = self.__dict__.get("_waiting_threads")
            if pool is None:
                pool = ThreadPoolExecutor(ASYNC_WAIT_THREADS, "conveyor-wait")
                self.__dict__["_waiting_threads"] = pool
            return pool

    def close(self) -> None:
        """Release connections and files (and the threads of ``wait_async``)."""
        with _WAIT_THREADS_LOCK:
            pool: ThreadPoolExecutor | None = self.__dict__.pop("_waiting_threads", None)
        if pool is not None:  # the waits under way end as a wait on a closed broker does
            pool.shutdown(wait=False)
        super().close()

    def payload(self, job_id: str) -> bytes | None:
        """The job's current payload while it is pending or running, and after it failed,
        died or was cancelled; None for an unknown (or expired) id. A succeeded job's
        record keeps its result; an adapter may drop its payload then (Redis does: it rides
        in the stream entry, deleted at the end). Cancelling a workflow step reads it to
        learn what follows the step."""
        with self._errors:
            return self._payload(job_id)

    def cancel(self, job_id: str, event: bytes | None = None) -> JobStatus:
        """Cancel a job: a pending one is removed at once, a running one is flagged so its
        worker stops it (seen at the next lease renewal). Returns the status afterwards.
        Raises ``JobNotFound`` for an unknown id. ``event`` is published only if this call
        cancels a queued or scheduled job."""
        with self._errors:
            status = self._cancel(job_id, event)
        if status is None:
            raise job_not_found(job_id)
        return status

    # -- workers and events ----------------------------------------------------------------

    def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Announce a live worker; it disappears from ``workers()`` ``ttl`` s after the last.
        Sets ``info.seen_at`` to the broker's now."""
        with self._errors:
            self._heartbeat(info, ttl)

    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker's announcement (clean stop)."""
        with self._errors:
            self._forget_worker(worker_id)

    def publish(self, events: Sequence[bytes]) -> None:
        """Append events to the capped event log, in order, in one step."""
        if not events:
            return
        with self._errors:
            self._publish(events)

    # -- the primitives an adapter implements -----------------------------------------------
    # Called with their arguments checked (never an empty batch), inside ``_errors``.

    @abstractmethod
    def _enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes]) -> list[str]:
        """All of the batch or none, in one atomic step (see the contract)."""

    async def _enqueue_async(
        self, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        """An adapter with an asyncio client of its own overrides this; a thread by default."""
        return await asyncio.to_thread(self._enqueue, envelopes, events)

    def _enqueue_in(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        """Write through the caller's ``connection``, in its transaction: an adapter whose
        backend is a database the caller also writes to overrides this (PostgreSQL)."""
        raise ConfigurationError(
            f"connection= (enqueue inside your own transaction) needs the PostgreSQL broker "
            f"in the same database; this app's broker is {type(self).__name__}: leave "
            "connection= out, or use postgresql://"
        )

    async def _enqueue_in_async(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        """An asyncio connection's enqueue (``delay_async``); the blocking one by default."""
        return self._enqueue_in(connection, envelopes, events)

    @abstractmethod
    def _fetch(self, queues: list[str], consumer: str, count: int, lease: float) -> Watch[Claimed]:
        """A watch whose look claims up to ``count`` due jobs (count >= 1) and says when the
        next scheduled job or lease comes due, in seconds from now on the broker's clock
        (None: nothing will). Its sleep wakes when work may have come (enqueue, retry,
        release, requeue, promote, resume)."""

    @abstractmethod
    def _renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]: ...

    @abstractmethod
    def _finish(self, outcomes: Sequence[Finish], events: Sequence[bytes]) -> list[bool]: ...

    @abstractmethod
    def _release(self, deliveries: Sequence[Delivery]) -> list[bool]: ...

    @abstractmethod
    def _promote(self, job_id: str, payload: bytes) -> bool: ...

    @abstractmethod
    def _progress(self, delivery: Delivery, value: float, note: str | None) -> bool: ...

    @abstractmethod
    def _get(self, job_ids: Sequence[str]) -> list[JobRecord | None]: ...

    @abstractmethod
    def _wait(self, job_id: str) -> Watch[JobRecord | None]:
        """A watch whose look reads the job's record (None: unknown or gone) and whose sleep
        wakes when the job ends (or is purged)."""

    def _wait_async(self, job_id: str) -> AsyncWatch[JobRecord | None] | None:
        """An adapter with an asyncio client of its own returns an ``AsyncWatch``; None (a
        thread runs ``wait``) by default."""
        return None

    @abstractmethod
    def _payload(self, job_id: str) -> bytes | None: ...

    @abstractmethod
    def _cancel(self, job_id: str, event: bytes | None) -> JobStatus | None:
        """The status after the cancel; None for an unknown (or expired) id."""

    @abstractmethod
    def _heartbeat(self, info: WorkerInfo, ttl: float) -> None: ...

    @abstractmethod
    def _forget_worker(self, worker_id: str) -> None: ...

    @abstractmethod
    def _publish(self, events: Sequence[bytes]) -> None: ...


def _checked(envelopes: Sequence[Envelope], events: Sequence[bytes]) -> bool:
    """Check an enqueue's envelopes and events; False when there is nothing to write."""
    check_envelopes(envelopes)
    check_events(envelopes, events)
    return bool(envelopes)
