"""Operations on the Redis broker: stats, entries, requeue, pause, purge, delete, workers.

None of this is on the hot path; it walks the known-queue set and the per-status indexes
(sorted sets), never ``KEYS`` or a pattern ``SCAN``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..._message import JobEntry, JobStatus, QueueStats, WorkerInfo
from ._core import PAYLOAD_FIELDS, RedisCore, text
from ._keys import TERMINAL_INDEXES

_PURGE_CHUNK = 1000
_QUEUED_CHUNK = 100  # queues per queued script call (ten streams each)
_FORGET_CHUNK = 100  # queues per forget script call (ten streams each)
_REQUEUE_CHUNK = 200  # jobs per requeue script call (a call blocks Redis while it runs)
_ENTRY_FIELDS = (*PAYLOAD_FIELDS, "reason", "updated_at", "status")
# Past 2**53 a count is a Lua float that reaches Redis as 1e+17, which XRANGE and ZREVRANGE
# refuse: no Redis holds that many jobs, so a page ends there.
_COUNT_MAX = 2**53


def _entry_order(sid: Any) -> tuple[int, int]:
    """A stream entry id as (ms, sequence): the order of entries across streams."""
    ms, _, seq = text(sid).partition("-")
    return int(ms), int(seq)


class AdminMixin(RedisCore):
    def _known_queues(self) -> list[str]:
        return sorted(text(q) for q in self._client.smembers(self._keys.queues))

    def _stats(self) -> list[QueueStats]:
        pipe = self._client.pipeline(transaction=False)
        pipe.smembers(self._keys.queues)
        pipe.smembers(self._keys.paused)
        pipe.time()
        pipe.get(self._keys.shards)
        known, paused_raw, server_time, layout = pipe.execute()
        if not self._layout_checked:
            self._check_layout(layout)
        paused = {text(q) for q in paused_raw}
        queues = sorted({text(q) for q in known} | paused)  # a paused queue may have no jobs
        now = self._now(server_time)
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
            total = queued + scheduled + running + succeeded + failed + dead + cancelled
            if total == 0 and q not in paused:
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
                    cancelled=cancelled,
                    paused=q in paused,
                )
            )
        return out

    def _queued(self, queues: Sequence[str], limit: int) -> tuple[list[int], list[str]]:
        """How many jobs each queue has waiting in its streams, and the ids of the first
        ``limit`` in the order fetch hands them out (queued.lua: queued jobs have no index
        of their own), merged across the chunks of queues."""
        depths: list[int] = []
        found: list[tuple[int, tuple[int, int], str]] = []
        for at in range(0, len(queues), _QUEUED_CHUNK):
            streams = [s for q in queues[at : at + _QUEUED_CHUNK] for s in self._keys.streams(q)]
            counts, jobs = self._eval("queued", streams, [*self._head(), limit])
            depths += [int(n) for n in counts]
            found += [(-int(p), _entry_order(sid), text(i)) for i, p, sid in jobs]
        found.sort()
        return depths, [i for *_, i in found[:limit]]

    def _scheduled(self, queues: Sequence[str], limit: int) -> list[str]:
        """The first ``limit`` scheduled ids, soonest eta first (parked ones, scored +inf,
        last), ties by id as a sorted set orders them."""
        pipe = self._client.pipeline(transaction=False)
        for q in queues:
            pipe.zrange(self._keys.queue(q, "scheduled"), 0, limit - 1, withscores=True)
        found = sorted((float(at), text(i)) for ids in pipe.execute() for i, at in ids)
        return [i for _, i in found[:limit]]

    def _running(self, queues: Sequence[str]) -> list[str]:
        """Every running id of the queues (a few per worker)."""
        pipe = self._client.pipeline(transaction=False)
        for q in queues:
            pipe.zrange(self._keys.queue(q, JobStatus.RUNNING.value), 0, -1)
        return [text(i) for ids in pipe.execute() for i in ids]

    def _ended(
        self, queues: Sequence[str], status: JobStatus, limit: int, offset: int
    ) -> list[str]:
        """One page of an ended status's ids, read by rank from the queues' indexes
        (ended.lua): what it costs does not grow with the offset."""
        keys = [self._keys.queue(q, status.value) for q in queues]
        return [text(i) for i in self._eval("ended", keys, [*self._head(), offset, limit])]

    def _entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int
    ) -> list[JobEntry]:
        if not self._layout_checked:
            self._check_layout()
        queues = [queue] if queue is not None else self._known_queues()
        limit = min(limit, _COUNT_MAX - offset)
        if not queues or limit < 1:
            return []
        want = offset + limit
        # Only the page is read, in its order, but for running jobs (a few per worker):
        # they are ordered by when they last changed, a field of the hash, so every one is.
        ordered = status is not JobStatus.RUNNING
        if status is JobStatus.QUEUED:
            ids = self._queued(queues, want)[1][offset:]
        elif status is JobStatus.SCHEDULED:
            ids = self._scheduled(queues, want)[offset:]
        elif status is JobStatus.RUNNING:
            ids = self._running(queues)
        else:
            # Ended jobs are indexed by record expiry, which orders them by ``at`` where a
            # queue's jobs share one result TTL (the contract's caveat).
            ids = self._ended(queues, status, limit, offset)
        pipe = self._client.pipeline(transaction=False)
        pipe.time()
        for i in ids:
            pipe.hmget(self._keys.job(i), _ENTRY_FIELDS)
        server_time, *rows = pipe.execute()
        now = self._now(server_time)
        payloads = self._payloads([row[:5] for row in rows])
        found: list[tuple[int, JobEntry]] = []
        for job_id, row, payload in zip(ids, rows, payloads, strict=True):
            _, _, q, _, expires, reason, updated, st = row
            if st is None or text(st) != status.value or (expires and int(expires) <= now):
                continue  # changed since its index was read
            at = int(updated or 0)
            found.append(
                (
                    at,
                    JobEntry(
                        job_id, text(q), payload or b"", status, text(reason or b""), at / 1000
                    ),
                )
            )
        if ordered:
            return [e for _, e in found[:limit]]
        found.sort(key=lambda f: (f[0], f[1].id), reverse=True)
        return [e for _, e in found[offset : offset + limit]]

    def _requeue(self, items: list[tuple[str, bytes]]) -> list[str | None]:
        head = self._head()
        calls = [
            (
                [self._keys.unique, self._keys.queues],
                [*head, *(x for item in items[at : at + _REQUEUE_CHUNK] for x in item)],
            )
            for at in range(0, len(items), _REQUEUE_CHUNK)
        ]
        replies = self._run("requeue", calls)
        return [text(r) or None for reply in replies for r in reply]

    def _pause(self, queue: str) -> None:
        if not self._layout_checked:  # a plain SADD: on a sharded prefix it paused nothing
            self._check_layout()
        self._client.sadd(self._keys.paused, queue)

    def _resume(self, queue: str) -> None:
        self._eval("resume", [self._keys.paused, self._keys.resumed], [*self._head(), queue])

    def _purge(self, queue: str) -> int:
        if not self._layout_checked:  # the script is called directly, not through _run
            self._check_layout()
        keys = [*self._keys.queue_keys(queue), self._keys.unique, *self._guard]
        total = 0
        more = 1
        while more:
            deleted, more = self._scripts["purge"](keys=keys, args=[*self._head(), _PURGE_CHUNK])
            total += int(deleted)
        return total

    def _delete(self, job_ids: list[str]) -> list[JobStatus | None]:
        out: list[JobStatus | None] = []
        for job_id in job_ids:  # delete.lua: one atomic step per job, in its queue's keys
            res = self._by_id("delete", job_id, [], b"moved")
            gone = res is not None and res not in (b"missing", b"leased")
            out.append(JobStatus(text(res)) if gone else None)
        return out

    def _workers(self) -> list[WorkerInfo]:
        ids = self._client.zrangebyscore(self._keys.workers, f"({self._now()}", "+inf")
        if not ids:
            return []
        raw = self._client.mget([self._keys.worker(text(i)) for i in ids])
        return [msgspec.json.decode(r, type=WorkerInfo) for r in raw if r is not None]

    def _forget_worker(self, worker_id: str) -> None:
        """Drop the announcement, and the worker's consumer (named by its id, as the worker
        fetches) from every group where it holds nothing pending; where it still holds
        entries (a hard stop) it stays, and the lease reclaim or sweep deals with them."""
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(self._keys.workers, worker_id)
        pipe.delete(self._keys.worker(worker_id))
        pipe.execute()
        queues = self._known_queues()
        for i in range(0, len(queues), _FORGET_CHUNK):
            streams = [s for q in queues[i : i + _FORGET_CHUNK] for s in self._keys.streams(q)]
            self._scripts["forget"](keys=streams, args=[*self._head(), worker_id])
