"""What the memory broker's parts share: its state, its clock, and the moves every operation
makes on its jobs (call them with the condition held)."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Sequence
from typing import Self

from ..._clock import Clock
from ..._message import Delivery, Envelope, JobRecord, JobStatus
from .._base import (
    CANCELLED_TTL,
    CANCELLED_WORKER_STOPPED,
    EVENTS_KEPT,
    BrokerOptions,
    unknown_dependency,
)
from .._port import Broker
from ._events import EventRing
from ._state import State, StoredJob
from .store import MemoryKV


class MemoryCore(Broker):
    def __init__(self, clock: Clock | None = None, *, events_kept: int = EVENTS_KEPT) -> None:
        super().__init__("memory://", clock=clock, events_kept=events_kept)
        self._cond = threading.Condition()
        self._s = State()
        self._seq = itertools.count()
        self._kv = MemoryKV(self._clock)
        self._events = EventRing(events_kept)

    @classmethod
    def from_url(cls, url: str, options: BrokerOptions) -> Self:
        return cls(options.clock, events_kept=options.events_kept)

    @property
    def kv(self) -> MemoryKV:
        return self._kv

    def _events_kept_changed(self) -> None:
        self._events.resize(self.events_kept)

    # -- moves (call with the condition held) ------------------------------------------------

    def _push_ready(self, job: StoredJob) -> None:
        job.status = JobStatus.QUEUED
        job.seq = next(self._seq)
        heap = self._s.ready.setdefault(job.envelope.queue, [])
        heapq.heappush(heap, (-job.envelope.priority, job.seq, job.envelope.id))

    def _place(self, job: StoredJob, now: float) -> None:
        eta = job.envelope.eta
        if eta is not None and eta > now:
            job.status = JobStatus.SCHEDULED
            job.seq = next(self._seq)
            heapq.heappush(self._s.scheduled, (eta, job.seq, job.envelope.id))
        else:
            self._push_ready(job)

    def _live(self, job_id: str, now: float) -> StoredJob | None:
        job = self._s.jobs.get(job_id)
        if job is not None and job.expires_at is not None and job.expires_at <= now:
            del self._s.jobs[job_id]
            return None
        return job

    def _make_due(self, now: float) -> None:
        sched = self._s.scheduled
        while sched and sched[0][0] <= now:
            _, seq, job_id = heapq.heappop(sched)
            job = self._s.jobs.get(job_id)
            if job is not None and job.status is JobStatus.SCHEDULED and job.seq == seq:
                self._push_ready(job)
        for job in self._running():
            if job.lease_until <= now:
                self._hand_back(job, now)

    def _running(self) -> list[StoredJob]:
        """Running jobs, found through the running index rather than a scan of every job."""
        found = []
        for job_id in list(self._s.running):
            job = self._s.jobs.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING:
                self._s.running.discard(job_id)
            else:
                found.append(job)
        return found

    def _pop(self, queues: Sequence[str]) -> StoredJob | None:
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

    def _hand_back(self, job: StoredJob, now: float) -> None:
        """A running job whose worker let go: queue it again, unless it was being cancelled."""
        job.token = ""
        if job.cancel_requested:
            reason = CANCELLED_WORKER_STOPPED
            expires = now + CANCELLED_TTL
            self._end(job, JobStatus.CANCELLED, None, reason, expires=expires, now=now)
        else:
            self._push_ready(job)

    def _end(
        self,
        job: StoredJob,
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

    def _release_dependents(self, job: StoredJob) -> None:
        """A job ended: count it off each dependent's wait; the last one makes it due."""
        for child_id in job.dependents or ():
            child = self._s.jobs.get(child_id)
            if child is None or child.status is not JobStatus.SCHEDULED or child.waiting <= 0:
                continue  # cancelled or gone meanwhile
            child.waiting -= 1
            if child.waiting == 0:
                self._push_ready(child)
        job.dependents = None

    def _forget_dependencies(self, job: StoredJob) -> None:
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

    def _wait_for_dependencies(self, job: StoredJob, now: float) -> bool:
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

    def _owned(self, delivery: Delivery) -> StoredJob | None:
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

    def _next_due(self) -> float | None:
        times = [t for t, _, _ in self._s.scheduled[:1]]
        times += [j.lease_until for j in self._running()]
        return min(times) if times else None

    def _record(self, job: StoredJob) -> JobRecord:
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
