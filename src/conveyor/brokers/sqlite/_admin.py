"""The SQLite broker's operations: stats, entries, requeue, pause, purge, delete, workers
and the event log's reads."""

from __future__ import annotations

import sqlite3

import msgspec

from ..._message import JobEntry, JobStatus, QueueStats, WorkerInfo
from .._admin import Events, grouped_stats
from .._base import REQUEUEABLE
from .._eventlog import numbered
from ._core import Polling, SQLiteCore
from ._notify import ANY_JOB, FETCHERS
from ._sql import ENTRY_ORDER, LIVE, NEWEST_FIRST, PENDING_KEY, REQUEUE, take_seq


class SQLiteAdmin(SQLiteCore):
    def _stats(self) -> list[QueueStats]:
        # Pending jobs never expire (expires_at is set when a job ends): they are counted
        # from jobs_ready alone (status and queue are in it), and only ended ones are read
        # from the table for their expiry.
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT queue, status, count(*) FROM jobs "
                "WHERE status IN ('queued', 'scheduled', 'running') GROUP BY queue, status"
            ).fetchall()
            rows += conn.execute(
                "SELECT queue, status, count(*) FROM jobs WHERE status IN "
                f"('succeeded', 'failed', 'dead', 'cancelled') AND {LIVE} "
                "GROUP BY queue, status",
                (self._clock.time(),),
            ).fetchall()
            paused = conn.execute("SELECT queue FROM paused").fetchall()
        return grouped_stats(rows, [q for (q,) in paused])

    def _entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int
    ) -> list[JobEntry]:
        # One statement per case, not "(? IS NULL OR queue = ?)": with the queue named,
        # SQLite reads a queued page straight from jobs_ready in its order, instead of
        # sorting every queued job of every queue (the overview reads one queue's head
        # per queue, each sample).
        where, args = (
            ("status = ? AND queue = ?", (status, queue)) if queue else ("status = ?", (status,))
        )
        sql = (
            f"SELECT id, queue, payload, status, reason, updated_at FROM jobs "
            f"WHERE {where} AND {LIVE} "
            f"ORDER BY {ENTRY_ORDER.get(status, NEWEST_FIRST)} LIMIT ? OFFSET ?"
        )
        with self._db.read() as conn:
            rows = conn.execute(sql, (*args, self._clock.time(), limit, offset))
            return [
                JobEntry(id=i, queue=q, payload=bytes(p), status=JobStatus(s), reason=r, at=at)
                for i, q, p, s, r, at in rows
            ]

    def _requeue(self, items: list[tuple[str, bytes]]) -> list[str | None]:
        with self._db.write() as conn:
            now = self._clock.time()
            out = [self._requeue_one(conn, job_id, payload, now) for job_id, payload in items]
        if any(got == job_id for got, (job_id, _) in zip(out, items, strict=True)):
            self._notify.wake(FETCHERS)
        return out

    def _requeue_one(
        self, conn: sqlite3.Connection, job_id: str, payload: bytes, now: float
    ) -> str | None:
        row = conn.execute(
            f"SELECT status, key, depends_on FROM jobs WHERE id = ? AND {LIVE}", (job_id, now)
        ).fetchone()
        if row is None or JobStatus(row[0]) not in REQUEUEABLE:
            return None
        _, key, deps = row
        if key is not None:  # as on enqueue: a pending job holding the key stands for it
            holder = conn.execute(PENDING_KEY, (key, job_id)).fetchone()
            if holder is not None:
                return str(holder[0])
        waiting = 0
        if deps:
            waiting = self._wait_for_dependencies(conn, job_id, deps.split(","), now, known=False)
        status = JobStatus.SCHEDULED if waiting else JobStatus.QUEUED
        seq = take_seq(conn, 1) + 1
        conn.execute(REQUEUE, (status, payload, seq, waiting, now, job_id))
        return job_id

    def _pause(self, queue: str) -> None:
        with self._db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO paused(queue) VALUES (?)", (queue,))

    def _resume(self, queue: str) -> None:
        with self._db.write() as conn:
            gone = conn.execute("DELETE FROM paused WHERE queue = ?", (queue,))
        if gone.rowcount:
            self._notify.wake(FETCHERS)

    def _purge(self, queue: str) -> int:
        with self._db.write() as conn:
            gone = [
                row[0]
                for row in conn.execute(
                    "DELETE FROM jobs WHERE queue = ? AND status IN ('queued', 'scheduled') "
                    "RETURNING id",
                    (queue,),
                )
            ]
            # Gone like ended jobs: their dependents are counted down. A dependent in this
            # queue was queued or scheduled, so it went in the same DELETE.
            due = self._release_dependents(conn, gone) if gone else 0
            self._forget_dependencies(conn, gone)
        if gone:
            self._notify.wake(ANY_JOB)  # their waiters learn the jobs are gone
        if due:
            self._notify.wake(FETCHERS)
        return len(gone)

    def _delete(self, job_ids: list[str]) -> list[JobStatus | None]:
        out: list[JobStatus | None] = []
        gone: list[str] = []
        with self._db.write() as conn:
            now = self._clock.time()
            for job_id in job_ids:
                # A running job under a live lease is its worker's; one whose lease expired
                # (its worker is gone) goes: the fence refuses a late finish without a record.
                row = conn.execute(
                    f"DELETE FROM jobs WHERE id = ? AND {LIVE} "
                    "AND (status != 'running' OR lease_until <= ?) RETURNING status",
                    (job_id, now, now),
                ).fetchone()
                out.append(None if row is None else JobStatus(row[0]))
                if row is not None:
                    gone.append(job_id)
            # Gone before they ended (queued, scheduled, running): their dependents are
            # counted down, as purge does. Ended ones have none left, and wait for nothing.
            due = self._release_dependents(conn, gone) if gone else 0
            self._forget_dependencies(conn, gone)
        if gone:
            self._wake_ended(gone)  # their waiters learn the jobs are gone
        if due:
            self._notify.wake(FETCHERS)
        return out

    def _workers(self) -> list[WorkerInfo]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT info FROM workers WHERE expires_at > ? ORDER BY rowid",
                (self._clock.time(),),
            ).fetchall()
        return [msgspec.json.decode(r[0], type=WorkerInfo) for r in rows]

    def _read_events(self, start: int, limit: int) -> Polling[Events]:
        def look() -> Events:
            with self._db.read() as conn:  # rows hold one event or more: limit rows is enough
                rows = conn.execute(
                    "SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (start, limit)
                ).fetchall()
            return numbered(((i, bytes(body)) for i, body in rows), start, limit)

        return Polling(look)

    def _events_tail(self) -> int:
        with self._db.read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'events'").fetchone()
        return int(row[0])
