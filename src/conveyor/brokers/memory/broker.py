"""The memory broker's hot path: enqueue, fetch, renew, finish, release, promote, progress,
records, cancel, heartbeats and publish."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from ..._message import Delivery, Envelope, JobRecord, JobStatus, WorkerInfo
from .._base import CANCELLED_PENDING, CANCELLED_TTL, PARKED
from .._port import Claimed, Finish, LeaseState
from ._admin import MemoryAdmin
from ._state import PENDING, OnCondition, StoredJob


class MemoryBroker(MemoryAdmin):
    """``Conveyor("memory://")``: the reference adapter, for one process and for tests."""

    # -- producing -------------------------------------------------------------------------

    def _enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes]) -> list[str]:
        ids: list[str] = []
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
                    if other is not None and other.status in PENDING:
                        ids.append(other.envelope.id)
                        continue
                job = StoredJob(envelope=env, status=JobStatus.QUEUED, seq=0, updated_at=now)
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

    def _fetch(
        self, queues: list[str], consumer: str, count: int, lease: float
    ) -> OnCondition[Claimed]:
        return OnCondition(self._cond, lambda: self._claim(queues, count, lease))

    def _claim(self, queues: list[str], count: int, lease: float) -> Claimed:
        out: list[Delivery] = []
        with self._cond:
            now = self._clock.time()
            self._make_due(now)
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
            due = None if out else self._next_due()
            return out, None if due is None else due - now

    def _renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
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

    def _finish(self, outcomes: Sequence[Finish], events: Sequence[bytes]) -> list[bool]:
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

    def _release(self, deliveries: Sequence[Delivery]) -> list[bool]:
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

    def _promote(self, job_id: str, payload: bytes) -> bool:
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

    def _progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        with self._cond:
            job = self._owned(delivery)
            if job is None:
                return False
            job.progress, job.progress_note = value, note
            job.updated_at = self._clock.time()
            return True

    # -- job records -----------------------------------------------------------------------

    def _get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        with self._cond:
            now = self._clock.time()
            return [
                self._record(job) if (job := self._live(i, now)) is not None else None
                for i in job_ids
            ]

    def _wait(self, job_id: str) -> OnCondition[JobRecord | None]:
        return OnCondition(self._cond, lambda: self._get([job_id])[0])

    def _payload(self, job_id: str) -> bytes | None:
        with self._cond:
            job = self._live(job_id, self._clock.time())
            return None if job is None else job.envelope.payload

    def _cancel(self, job_id: str, event: bytes | None) -> JobStatus | None:
        with self._cond:
            now = self._clock.time()
            job = self._live(job_id, now)
            if job is None:
                return None
            if job.status is JobStatus.RUNNING:
                job.cancel_requested = True
            elif job.status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
                self._forget_dependencies(job)
                reason, expires = CANCELLED_PENDING, now + CANCELLED_TTL
                self._end(job, JobStatus.CANCELLED, None, reason, expires=expires, now=now)
                if event is not None:
                    self._events.append([event])
                self._cond.notify_all()
            return job.status

    # -- workers and events ----------------------------------------------------------------

    def _heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        with self._cond:
            now = self._clock.time()
            info.seen_at = now
            self._s.workers[info.id] = (info, now + ttl)

    def _forget_worker(self, worker_id: str) -> None:
        with self._cond:
            self._s.workers.pop(worker_id, None)

    def _publish(self, events: Sequence[bytes]) -> None:
        self._events.append(events)
