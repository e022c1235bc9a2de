"""Operations on the Redis broker: stats, failed/dead entries, requeue, purge, heartbeats.

None of this is on the hot path; it walks the known-queue set and the per-status indexes
(sorted sets), never ``KEYS`` or a pattern ``SCAN``.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..._message import JobEntry, JobStatus, QueueStats, WorkerInfo, validate_queue
from . import _connect
from ._core import PAYLOAD_FIELDS, RedisCore, text, to_ms
from ._keys import TERMINAL_INDEXES

_PURGE_CHUNK = 1000
_QUEUED_CHUNK = 100  # queues per queued script call (ten streams each)
_FORGET_CHUNK = 100  # queues per forget script call (ten streams each)
_GC_GRACE = 60  # seconds a worker's record outlives its announcement (garbage collection)
_ENTRY_FIELDS = (*PAYLOAD_FIELDS, "reason", "updated_at", "status")


class AdminMixin(RedisCore):
    def _known_queues(self) -> list[str]:
        with _connect.translate():
            return sorted(text(q) for q in self._client.smembers(self._keys.queues))

    def stats(self) -> list[QueueStats]:
        queues = self._known_queues()
        now = self._now()
        with _connect.translate():
            pipe = self._client.pipeline(transaction=False)
            for q in queues:
                for name in ("scheduled", "running"):
                    pipe.zcard(self._keys.queue(q, name))
                for name in TERMINAL_INDEXES:
                    pipe.zcount(self._keys.queue(q, name), f"({now}", "+inf")
            counts = pipe.execute()
        depths, _ = self._queued(queues, 0)
        out = []
        for i, q in enumerate(queues):
            scheduled, running, succeeded, failed, dead, cancelled = counts[i * 6 : i * 6 + 6]
            queued = depths[i]
            if queued + scheduled + running + succeeded + failed + dead + cancelled == 0:
                continue
            out.append(
                QueueStats(
                    queue=q,
                    queued=queued,
                    scheduled=scheduled,
                    running=running,
                    failed=failed,
                    dead=dead,
                    succeeded=succeeded,
                )
            )
        return out

    def _queued(self, queues: Sequence[str], limit: int) -> tuple[list[int], list[str]]:
        """How many jobs each queue has waiting in its streams, and the ids of up to
        ``limit`` of the newest in each chunk of queues (queued.lua: queued jobs have no
        index of their own; ``entries`` orders them all by time and keeps ``limit``)."""
        depths: list[int] = []
        newest: list[str] = []
        for at in range(0, len(queues), _QUEUED_CHUNK):
            streams = [s for q in queues[at : at + _QUEUED_CHUNK] for s in self._keys.streams(q)]
            with _connect.translate():
                counts, ids = self._eval("queued", streams, [*self._head(), limit])
            depths += [int(n) for n in counts]
            newest += [text(i) for i in ids]
        return depths, newest

    def _index_members(
        self, status: JobStatus, queues: Sequence[str], limit: int | None, now: int
    ) -> list[str]:
        """Job ids in a status index, newest first for terminal ones (score = expiry);
        queued ones from the streams."""
        if status is JobStatus.QUEUED:
            return self._queued(queues, 1_000_000 if limit is None else limit)[1]
        stop = -1 if limit is None else limit - 1
        with _connect.translate():
            pipe = self._client.pipeline(transaction=False)
            for q in queues:
                key = self._keys.queue(q, status.value)
                if status.value in TERMINAL_INDEXES:
                    pipe.zrevrangebyscore(
                        key, "+inf", f"({now}", start=0, num=-1 if limit is None else limit
                    )
                else:
                    pipe.zrevrange(key, 0, stop)
            return [text(i) for ids in pipe.execute() for i in ids]

    def entries(self, status: JobStatus, queue: str | None, limit: int) -> list[JobEntry]:
        queues = [validate_queue(queue)] if queue is not None else self._known_queues()
        if limit <= 0 or not queues:
            return []
        now = self._now()
        ids = self._index_members(status, queues, limit, now)
        with _connect.translate():
            pipe = self._client.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(self._keys.job(i), _ENTRY_FIELDS)
            rows = pipe.execute()
        payloads = self._payloads([row[:5] for row in rows])
        found = []
        for job_id, row, payload in zip(ids, rows, payloads, strict=True):
            _, _, q, _, expires, reason, updated, st = row
            if st is None or text(st) != status.value or (expires and int(expires) <= now):
                continue
            found.append(
                JobEntry(
                    id=job_id,
                    queue=text(q),
                    payload=payload or b"",
                    status=status,
                    reason=text(reason or b""),
                    at=int(updated or 0) / 1000,
                )
            )
        found.sort(key=lambda e: e.at, reverse=True)
        return found[:limit]

    def requeue(self, job_ids: Sequence[str] | None, status: JobStatus) -> int:
        if job_ids is None:
            job_ids = self._index_members(status, self._known_queues(), None, self._now())
        n = 0
        for job_id in job_ids:
            n += self._requeue_one(job_id, status)
        return n

    def _requeue_one(self, job_id: str, status: JobStatus) -> int:
        return int(self._by_id("requeue", job_id, [status.value], -1) or 0)

    def purge(self, queue: str) -> int:
        keys = [*self._keys.queue_keys(validate_queue(queue)), self._keys.unique]
        total = 0
        more = 1
        while more:
            with _connect.translate():
                deleted, more = self._scripts["purge"](
                    keys=keys, args=[*self._head(), _PURGE_CHUNK]
                )
            total += int(deleted)
        return total

    def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        now = self._now()
        info.seen_at = now / 1000
        with _connect.translate():
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._keys.worker(info.id), msgspec.json.encode(info), ex=int(ttl) + _GC_GRACE)
            pipe.zadd(self._keys.workers, {info.id: now + to_ms(ttl)})
            pipe.zremrangebyscore(self._keys.workers, "-inf", now)
            pipe.execute()

    def workers(self) -> list[WorkerInfo]:
        with _connect.translate():
            ids = self._client.zrangebyscore(self._keys.workers, f"({self._now()}", "+inf")
            if not ids:
                return []
            raw = self._client.mget([self._keys.worker(text(i)) for i in ids])
        return [msgspec.json.decode(r, type=WorkerInfo) for r in raw if r is not None]

    def forget_worker(self, worker_id: str) -> None:
        """Drop the announcement, and the worker's consumer (named by its id, as the worker
        fetches) from every group where it holds nothing pending; where it still holds
        entries (a hard stop) it stays, and the lease reclaim or sweep deals with them."""
        with _connect.translate():
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(self._keys.workers, worker_id)
            pipe.delete(self._keys.worker(worker_id))
            pipe.execute()
        queues = self._known_queues()
        for i in range(0, len(queues), _FORGET_CHUNK):
            streams = [s for q in queues[i : i + _FORGET_CHUNK] for s in self._keys.streams(q)]
            with _connect.translate():
                self._scripts["forget"](keys=streams, args=[*self._head(), worker_id])
