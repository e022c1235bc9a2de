"""The in-memory broker: the reference semantics of the port, for one process and for tests.

Everything sits behind one ``threading.Condition``: simple enough to be obviously right, which
is what a reference adapter is for. Time comes from the injected ``Clock``, so tests drive
delays, leases and TTLs without sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._clock import Clock, SystemClock
from .._errors import JobNotFound
from .._message import (
    Delivery,
    Envelope,
    JobEntry,
    JobRecord,
    JobStatus,
    QueueStats,
    WorkerInfo,
    validate_queue,
)
from ..stores.memory import MemoryKV
from ._port import (
    CANCELLED_PENDING,
    CANCELLED_WORKER_STOPPED,
    EVENTS_KEPT,
    PARKED,
    REQUEUEABLE,
    Broker,
    Finish,
    LeaseState,
    check_events,
    check_kept,
    check_page,
    check_read,
    event_number,
    unknown_dependency,
)

_PENDING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING)
_IDLE_WAKE = 0.05  # longest real sleep while a lease or eta may come due on an injected clock


@dataclass
class _Job:
    envelope: Envelope
    status: JobStatus
    seq: int
    token: str = ""
    deliveries: int = 0
    lease_until: float = 0.0
    result: bytes | None = None
    expires_at: float | None = None
    cancel_requested: bool = False
    progress: float | None = None
    progress_note: str | None = None
    updated_at: float = 0.0
    reason: str = ""
    settled_by: str = ""  # token of the delivery that finished or released it last
    waiting: int = 0  # dependencies not ended yet; parked (scheduled) while above 0
    dependents: list[str] | None = None  # ids of jobs counting this one among theirs


@dataclass
class _State:
    jobs: dict[str, _Job] = field(default_factory=dict)
    ready: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    scheduled: list[tuple[float, int, str]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)  # ids last seen running (pruned lazily)
    workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)


def _due(job: _Job) -> float:
    """When a scheduled job comes due; a parked one (promote, dependencies) never does."""
    eta = job.envelope.eta
    return PARKED if job.waiting or eta is None else eta


class EventRing:
    """The event log: a ring of the newest events (``deque(maxlen)``: a full one drops its
    oldest), each numbered; the number is its cursor. It has its own lock, so a publish
    never wakes a blocked fetch and a reader never holds up the broker's lock."""

    def __init__(self, kept: int) -> None:
        self._cond = threading.Condition()
        self._ring: deque[tuple[int, bytes]] = deque(maxlen=check_kept(kept))
        self._last = 0  # the number of the newest event ever appended

    @property
    def kept(self) -> int:
        return self._ring.maxlen or 0

    def resize(self, kept: int) -> None:
        with self._cond:
            self._ring = deque(self._ring, maxlen=check_kept(kept))

    def append(self, events: Sequence[bytes]) -> None:
        if not events:
            return
        with self._cond:
            for event in events:
                self._last += 1
                self._ring.append((self._last, bytes(event)))
            self._cond.notify_all()

    def read(self, after: str | None, block: float, limit: int) -> list[tuple[str, bytes]]:
        check_read(block, limit)
        start = event_number(after)
        deadline = time.monotonic() + block
        with self._cond:
            while True:
                ring = self._ring
                if ring and ring[-1][0] > start:
                    skip = max(start - ring[0][0] + 1, 0)
                    return [(str(n), e) for n, e in itertools.islice(ring, skip, skip + limit)]
                left = deadline - time.monotonic()  # real seconds, as every block
                if left <= 0:
                    return []
                self._cond.wait(left)

    def tail(self) -> str:
        with self._cond:
            return str(self._last)


class MemoryBroker(Broker):
    """The broker of ``memory://``: one process, everything in memory, time from ``clock``."""

    def __init__(self, clock: Clock | None = None, *, events_kept: int = EVENTS_KEPT) -> None:
        self.url = "memory://"
        self._clock = clock or SystemClock()
        self._cond = threading.Condition()
        self._s = _State()
        self._seq = itertools.count()
        self._kv = MemoryKV(self._clock)
        self._events = EventRing(events_kept)

    @property
    def kv(self) -> MemoryKV:
        return self._kv

    @property
    def events_kept(self) -> int:
        return self._events.kept

    @events_kept.setter
    def events_kept(self, kept: int) -> None:
        self._events.resize(kept)

    # -- internals (call with the condition held) -------------------------------------------

    def _push_ready(self, job: _Job) -> None:
        job.status = JobStatus.QUEUED
        job.seq = next(self._seq)
        heap = self._s.ready.setdefault(job.envelope.queue, [])
        heapq.heappush(heap, (-job.envelope.priority, job.seq, job.envelope.id))

    def _place(self, job: _Job, now: float) -> None:
        eta = job.envelope.eta
        if eta is not None and eta > now:
            job.status = JobStatus.SCHEDULED
            job.seq = next(self._seq)
            heapq.heappush(self._s.scheduled, (eta, job.seq, job.envelope.id))
        else:
            self._push_ready(job)

    def _live(self, job_id: str, now: float) -> _Job | None:
        job = self._s.jobs.get(job_id)
        if job is not None and job.expires_at is not None and job.expires_at <= now:
            del self._s.jobs[job_id]
            return None
        return job

    def _promote(self, now: float) -> None:
        sched = self._s.scheduled
        while sched and sched[0][0] <= now:
            _, seq, job_id = heapq.heappop(sched)
            job = self._s.jobs.get(job_id)
            if job is not None and job.status is JobStatus.SCHEDULED and job.seq == seq:
                self._push_ready(job)
        for job in self._running():
            if job.lease_until <= now:
                self._hand_back(job, now)

    def _running(self) -> list[_Job]:
        """Running jobs, found through the running index rather than a scan of every job."""
        found = []
        for job_id in list(self._s.running):
            job = self._s.jobs.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING:
                self._s.running.discard(job_id)
            else:
                found.append(job)
        return found

    def _pop(self, queues: Sequence[str]) -> _Job | None:
        best: tuple[int, int, str] | None = None
        best_queue = ""
        for q in queues:
            if q in self._s.paused:
                continue
            heap = self._s.ready.get(q)
            while heap:
                prio, seq, job_id = heap[0]
                job = self._s.jobs.get(job_id)
                if job is None or job.status is not JobStatus.QUEUED or job.seq != seq:
                    heapq.heappop(heap)  # stale heap entry
                    continue
                if best is None or (prio, seq) < best[:2]:
                    best, best_queue = (prio, seq, job_id), q
                break
        if best is None:
            return None
        heapq.heappop(self._s.ready[best_queue])
        return self._s.jobs[best[2]]

    def _hand_back(self, job: _Job, now: float) -> None:
        """A running job whose worker let go: queue it again, unless it was being cancelled."""
        job.token = ""
        if job.cancel_requested:
            reason = CANCELLED_WORKER_STOPPED
            self._end(job, JobStatus.CANCELLED, None, reason, expires=now + 86400.0, now=now)
        else:
            self._push_ready(job)

    def _end(
        self,
        job: _Job,
        status: JobStatus,
        result: bytes | None,
        reason: str,
        *,
        expires: float,
        now: float,
    ) -> None:
        job.status, job.result, job.reason = status, result, reason
        job.expires_at, job.updated_at = expires, now
        job.cancel_requested = False
        key = job.envelope.key
        if key is not None and self._s.keys.get(key) == job.envelope.id:
            del self._s.keys[key]
        if job.dependents:
            self._release_dependents(job)

    def _release_dependents(self, job: _Job) -> None:
        """A job ended: count it off each dependent's wait; the last one makes it due."""
        for child_id in job.dependents or ():
            child = self._s.jobs.get(child_id)
            if child is None or child.status is not JobStatus.SCHEDULED or child.waiting <= 0:
                continue  # cancelled or gone meanwhile
            child.waiting -= 1
            if child.waiting == 0:
                self._push_ready(child)
        job.dependents = None

    def _forget_dependencies(self, job: _Job) -> None:
        """A job leaves before its dependencies ended (purged, cancelled): they forget it,
        so its id, enqueued again later, is counted once and only for what it waits for."""
        for dep in job.envelope.depends_on:
            parent = self._s.jobs.get(dep)
            if parent is not None and parent.dependents:
                parent.dependents = [c for c in parent.dependents if c != job.envelope.id]

    def _check_dependencies(self, envelopes: Sequence[Envelope], now: float) -> None:
        """Every dependency names a known job or one earlier in the batch (before any write)."""
        earlier: set[str] = set()
        for env in envelopes:
            for dep in env.depends_on:
                if dep not in earlier and self._live(dep, now) is None:
                    raise unknown_dependency(env.id, dep)
            earlier.add(env.id)

    def _wait_for_dependencies(self, job: _Job, now: float) -> bool:
        """Register the job with each dependency not ended yet; True if there was one."""
        for dep in job.envelope.depends_on:
            parent = self._live(dep, now)
            if parent is None or parent.status.terminal:
                continue
            if parent.dependents is None:
                parent.dependents = []
            parent.dependents.append(job.envelope.id)
            job.waiting += 1
        if not job.waiting:
            return False
        job.status = JobStatus.SCHEDULED  # parked: no heap entry, nothing makes it due but this
        job.seq = next(self._seq)
        return True

    def _owned(self, delivery: Delivery) -> _Job | None:
        job = self._s.jobs.get(delivery.id)
        if job is None or job.status is not JobStatus.RUNNING or job.token != delivery.token:
            return None
        return job

    def _settled(self, delivery: Delivery) -> bool:
        """This very delivery already finished or released the job (a repeated call)."""
        job = self._live(delivery.id, self._clock.time())
        return (
            job is not None
            and job.settled_by == delivery.token
            and job.status is not JobStatus.RUNNING
        )

    def _next_event(self) -> float | None:
        times = [t for t, _, _ in self._s.scheduled[:1]]
        times += [j.lease_until for j in self._running()]
        return min(times) if times else None

    # -- producing -------------------------------------------------------------------------

    def enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes] = ()) -> list[str]:
        ids: list[str] = []
        for env in envelopes:  # check the whole batch first: all of it is written or none
            if not isinstance(env, Envelope):
                raise TypeError(f"enqueue takes Envelope objects, got {env!r}")
        check_events(envelopes, events)
        published: list[bytes] = []
        with self._cond:
            now = self._clock.time()
            if any(env.depends_on for env in envelopes):
                self._check_dependencies(envelopes, now)
            for env in envelopes:
                if self._live(env.id, now) is not None:
                    ids.append(env.id)  # idempotent: already written
                    continue
                if env.key is not None:
                    existing = self._s.keys.get(env.key)
                    other = self._live(existing, now) if existing else None
                    if other is not None and other.status in _PENDING:
                        ids.append(other.envelope.id)
                        continue
                job = _Job(envelope=env, status=JobStatus.QUEUED, seq=0, updated_at=now)
                self._s.jobs[env.id] = job
                if env.key is not None:
                    self._s.keys[env.key] = env.id
                if not (env.depends_on and self._wait_for_dependencies(job, now)):
                    self._place(job, now)
                ids.append(env.id)
                if events:
                    published.append(events[len(ids) - 1])
            self._events.append(published)
            self._cond.notify_all()
        return ids

    # -- consuming -------------------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], consumer: str, count: int, lease: float, block: float
    ) -> list[Delivery]:
        out: list[Delivery] = []
        if count <= 0:
            return out
        deadline = time.monotonic() + block
        with self._cond:
            while True:
                now = self._clock.time()
                self._promote(now)
                while len(out) < count:
                    job = self._pop(queues)
                    if job is None:
                        break
                    job.status = JobStatus.RUNNING
                    self._s.running.add(job.envelope.id)
                    job.token = secrets.token_hex(8)
                    job.deliveries += 1
                    job.lease_until = now + lease
                    job.updated_at = now
                    env = job.envelope
                    out.append(
                        Delivery(
                            id=env.id,
                            queue=env.queue,
                            payload=env.payload,
                            token=job.token,
                            deliveries=job.deliveries,
                            priority=env.priority,
                        )
                    )
                step = deadline - time.monotonic()  # real seconds: a wake-up may come early
                if out or step <= 0:
                    return out
                nxt = self._next_event()
                if nxt is not None:
                    step = min(step, max(nxt - now, 0.001), _IDLE_WAKE)
                self._cond.wait(step)

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        states: list[LeaseState] = []
        with self._cond:
            now = self._clock.time()
            for d in deliveries:
                job = self._owned(d)
                if job is None:
                    states.append(LeaseState.LOST)
                    continue
                job.lease_until = now + lease
                states.append(LeaseState.CANCELLED if job.cancel_requested else LeaseState.OK)
        return states

    def finish(self, outcomes: Sequence[Finish], events: Sequence[bytes] = ()) -> list[bool]:
        done: list[bool] = []
        published = list(events)
        with self._cond:
            now = self._clock.time()
            for f in outcomes:
                job = self._owned(f.delivery)
                if job is None:
                    done.append(self._settled(f.delivery))
                    continue
                if f.event is not None:
                    published.append(f.event)
                job.settled_by = f.delivery.token
                job.token = ""
                job.updated_at = now
                job.cancel_requested = False
                if f.retry is not None:
                    job.envelope = f.retry
                    job.deliveries = 0
                    job.result = f.result
                    self._place(job, now)
                else:
                    expires = now + f.result_ttl
                    self._end(job, f.status, f.result, f.reason, expires=expires, now=now)
                done.append(True)
            self._events.append(published)
            self._cond.notify_all()
        return done

    def release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        done: list[bool] = []
        with self._cond:
            for d in deliveries:
                job = self._owned(d)
                if job is None:
                    done.append(self._settled(d))
                    continue
                job.settled_by = d.token
                job.deliveries = max(job.deliveries - 1, 0)
                self._hand_back(job, self._clock.time())
                done.append(True)
            self._cond.notify_all()
        return done

    def promote(self, job_id: str, payload: bytes) -> bool:
        with self._cond:
            job = self._live(job_id, self._clock.time())
            if job is None or job.status is not JobStatus.SCHEDULED:
                return False
            if job.envelope.eta != PARKED:
                return False
            env = job.envelope
            job.envelope = Envelope(env.id, env.queue, payload, env.priority, None, env.key)
            self._push_ready(job)
            self._cond.notify_all()
            return True

    def progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        with self._cond:
            job = self._owned(delivery)
            if job is None:
                return False
            job.progress, job.progress_note = value, note
            job.updated_at = self._clock.time()
            return True

    # -- job records -----------------------------------------------------------------------

    def _record(self, job: _Job) -> JobRecord:
        return JobRecord(
            id=job.envelope.id,
            status=job.status,
            queue=job.envelope.queue,
            result=job.result if job.status.terminal else None,
            progress=job.progress,
            progress_note=job.progress_note,
            updated_at=job.updated_at,
            deliveries=job.deliveries,
            reason=job.reason,
        )

    def get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        with self._cond:
            now = self._clock.time()
            return [
                self._record(job) if (job := self._live(i, now)) is not None else None
                for i in job_ids
            ]

    def wait(self, job_id: str, timeout: float | None) -> JobRecord | None:
        with self._cond:
            job = self._live(job_id, self._clock.time())
            if job is None:
                raise JobNotFound(f"no job with id {job_id!r} (unknown, purged or expired)")
            finished = self._cond.wait_for(
                lambda: job.status.terminal or self._s.jobs.get(job_id) is not job, timeout
            )
            if self._s.jobs.get(job_id) is not job:
                raise JobNotFound(f"job {job_id!r} was purged while waiting for it")
            return self._record(job) if finished else None

    def payload(self, job_id: str) -> bytes | None:
        with self._cond:
            job = self._live(job_id, self._clock.time())
            return None if job is None else job.envelope.payload

    def cancel(self, job_id: str, event: bytes | None = None) -> JobStatus:
        with self._cond:
            now = self._clock.time()
            job = self._live(job_id, now)
            if job is None:
                raise JobNotFound(f"no job with id {job_id!r} (unknown, purged or expired)")
            if job.status is JobStatus.RUNNING:
                job.cancel_requested = True
            elif job.status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
                self._forget_dependencies(job)
                reason = CANCELLED_PENDING
                self._end(job, JobStatus.CANCELLED, None, reason, expires=now + 86400.0, now=now)
                if event is not None:
                    self._events.append([event])
                self._cond.notify_all()
            return job.status

    # -- operations ------------------------------------------------------------------------

    def stats(self) -> list[QueueStats]:
        with self._cond:
            now = self._clock.time()
            by_queue = {q: QueueStats(q, paused=True) for q in self._s.paused}
            for job_id in list(self._s.jobs):
                job = self._live(job_id, now)
                if job is None:
                    continue
                st = by_queue.setdefault(job.envelope.queue, QueueStats(job.envelope.queue))
                name = job.status.value
                setattr(st, name, getattr(st, name) + 1)
            return sorted(by_queue.values(), key=lambda s: s.queue)

    def entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int = 0
    ) -> list[JobEntry]:
        check_page(limit, offset)
        with self._cond:
            now = self._clock.time()
            found = [
                j
                for i in list(self._s.jobs)
                if (j := self._live(i, now)) is not None
                and j.status is status
                and (queue is None or j.envelope.queue == queue)
            ]
            if status is JobStatus.QUEUED:  # the order fetch hands them out in
                found.sort(key=lambda j: (-j.envelope.priority, j.seq))
            elif status is JobStatus.SCHEDULED:  # soonest first; parked ones last
                found.sort(key=lambda j: (_due(j), j.envelope.id))
            else:
                found.sort(key=lambda j: (j.updated_at, j.envelope.id), reverse=True)
            return [
                JobEntry(
                    id=j.envelope.id,
                    queue=j.envelope.queue,
                    payload=j.envelope.payload,
                    status=j.status,
                    reason=j.reason,
                    at=j.updated_at,
                )
                for j in found[offset : offset + limit]
            ]

    def requeue(self, items: Sequence[tuple[str, bytes]]) -> list[str | None]:
        with self._cond:
            now = self._clock.time()
            out = [self._requeue_one(job_id, payload, now) for job_id, payload in items]
            self._cond.notify_all()
        return out

    def _requeue_one(self, job_id: str, payload: bytes, now: float) -> str | None:
        job = self._live(job_id, now)
        if job is None or job.status not in REQUEUEABLE:
            return None
        env = job.envelope
        if env.key is not None:  # as on enqueue: a pending job holding the key stands for it
            holder = self._s.keys.get(env.key)
            other = self._live(holder, now) if holder and holder != job_id else None
            if other is not None and other.status in _PENDING:
                return other.envelope.id
            self._s.keys[env.key] = job_id
        job.envelope = Envelope(
            env.id, env.queue, payload, env.priority, key=env.key, depends_on=env.depends_on
        )
        job.expires_at, job.result, job.reason = None, None, ""
        job.progress = job.progress_note = None
        job.deliveries, job.waiting, job.updated_at = 0, 0, now
        job.cancel_requested = False
        if not (env.depends_on and self._wait_for_dependencies(job, now)):
            self._push_ready(job)
        return job_id

    def pause(self, queue: str) -> None:
        with self._cond:
            self._s.paused.add(validate_queue(queue))

    def resume(self, queue: str) -> None:
        with self._cond:
            self._s.paused.discard(validate_queue(queue))
            self._cond.notify_all()

    def paused(self) -> list[str]:
        with self._cond:
            return sorted(self._s.paused)

    def purge(self, queue: str) -> int:
        with self._cond:
            doomed = [
                i
                for i, j in self._s.jobs.items()
                if j.envelope.queue == queue and j.status in (JobStatus.QUEUED, JobStatus.SCHEDULED)
            ]
            for i in doomed:
                job = self._s.jobs.pop(i)
                key = job.envelope.key
                if key is not None and self._s.keys.get(key) == i:
                    del self._s.keys[key]
                # Gone like an ended job: its dependents are counted down. One in this
                # queue is doomed too (popped already, or later in this loop).
                self._release_dependents(job)
                self._forget_dependencies(job)
            self._s.ready.pop(queue, None)
            self._cond.notify_all()
            return len(doomed)

    def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        with self._cond:
            now = self._clock.time()
            info.seen_at = now
            self._s.workers[info.id] = (info, now + ttl)

    def workers(self) -> list[WorkerInfo]:
        with self._cond:
            now = self._clock.time()
            return [w for w, until in self._s.workers.values() if until > now]

    def forget_worker(self, worker_id: str) -> None:
        with self._cond:
            self._s.workers.pop(worker_id, None)

    # -- events ----------------------------------------------------------------------------

    def publish(self, events: Sequence[bytes]) -> None:
        self._events.append(events)

    def read_events(self, after: str | None, block: float, limit: int) -> list[tuple[str, bytes]]:
        return self._events.read(after, block, limit)

    def events_tail(self) -> str:
        return self._events.tail()
