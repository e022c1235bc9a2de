"""The memory broker's operations: stats, entries, requeue, pause, purge, delete, workers
and the event log's reads."""

from __future__ import annotations

from ..._message import Envelope, JobEntry, JobStatus, QueueStats, WorkerInfo
from .._admin import Events
from .._base import REQUEUEABLE
from ._core import MemoryCore
from ._state import PENDING, OnCondition, due_at


class MemoryAdmin(MemoryCore):
    def _stats(self) -> list[QueueStats]:
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
            return list(by_queue.values())

    def _entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int
    ) -> list[JobEntry]:
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
                found.sort(key=lambda j: (due_at(j), j.envelope.id))
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

    def _requeue(self, items: list[tuple[str, bytes]]) -> list[str | None]:
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
            if other is not None and other.status in PENDING:
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

    def _pause(self, queue: str) -> None:
        with self._cond:
            self._s.paused.add(queue)

    def _resume(self, queue: str) -> None:
        with self._cond:
            self._s.paused.discard(queue)
            self._cond.notify_all()

    def _purge(self, queue: str) -> int:
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

    def _delete(self, job_ids: list[str]) -> list[JobStatus | None]:
        with self._cond:
            now = self._clock.time()
            out = [self._delete_one(job_id, now) for job_id in job_ids]
            self._cond.notify_all()  # waiters learn the job is gone; dependents may be due
        return out

    def _delete_one(self, job_id: str, now: float) -> JobStatus | None:
        job = self._live(job_id, now)
        if job is None or (job.status is JobStatus.RUNNING and job.lease_until > now):
            return None  # unknown, expired, or its live worker's
        del self._s.jobs[job_id]  # its heap entries go stale: fetch and promote skip them
        key = job.envelope.key
        if key is not None and self._s.keys.get(key) == job_id:
            del self._s.keys[key]
        if not job.status.terminal:  # gone before it ended (a dead worker's too), as purge
            self._release_dependents(job)
            self._forget_dependencies(job)
        return job.status

    def _workers(self) -> list[WorkerInfo]:
        with self._cond:
            now = self._clock.time()
            return [w for w, until in self._s.workers.values() if until > now]

    def _read_events(self, start: int, limit: int) -> OnCondition[Events]:
        return self._events.after(start, limit)

    def _events_tail(self) -> int:
        return self._events.last
