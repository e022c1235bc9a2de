"""Operations on the PostgreSQL broker: stats, entries, requeue, pause, purge, delete,
workers, the event log's readers, warnings. None of this is on the hot path; each is one
statement or one transaction.

Events are inserted by the transaction of the change they describe and numbered by their
readers once committed (``{s}.read_events``), so a cursor is an event's number and none
slips in behind one a reader holds. A blocked reader sleeps until an ``e`` notification
(``_listen``), which every transaction that appends sends when it commits.
"""

from __future__ import annotations

import msgspec

from ..._message import JobEntry, JobStatus, QueueStats, WorkerInfo
from .._admin import Events, grouped_stats
from .._base import REQUEUEABLE
from ._core import LIVE, Listening, PostgresCore
from ._db import Connection, UniqueViolation

# The order of each status in ``entries`` (see the port's contract): parked and waiting
# jobs (eta 'Infinity' and NULL) after the others, ties by job id.
_ENTRY_ORDER = {
    JobStatus.QUEUED: "priority DESC, seq",
    JobStatus.SCHEDULED: "coalesce(eta, 'Infinity'), id",
}
_NEWEST_FIRST = "updated_at DESC, id DESC"
_PENDING = "('queued', 'scheduled', 'running')"
_TERMINAL = ", ".join(f"'{s.value}'" for s in JobStatus if s.terminal)
_REQUEUE = """
UPDATE {s}.jobs SET status = %(status)s, payload = %(payload)s, seq = nextval('{s}.seq'),
    waiting = %(waiting)s, eta = NULL, token = '', lease_until = NULL, expires_at = NULL,
    result = NULL, reason = '', deliveries = 0, progress = NULL, progress_note = NULL,
    cancel_requested = false, updated_at = {s}.clock(%(now)s)
WHERE id = %(id)s
"""
_HOLDER = f"SELECT id FROM {{s}}.jobs WHERE key = %s AND id <> %s AND status IN {_PENDING}"
_WAIT_FOR = f"""
WITH deps AS (
    SELECT id FROM {{s}}.jobs WHERE id = ANY(%(deps)s::text[]) AND {LIVE}
        AND status NOT IN ({_TERMINAL}) FOR SHARE),
added AS (
    INSERT INTO {{s}}.dependents(parent, child) SELECT id, %(id)s FROM deps
    ON CONFLICT DO NOTHING RETURNING 1)
SELECT count(*) FROM added
"""


class PostgresAdmin(PostgresCore):
    def _stats(self) -> list[QueueStats]:
        sql = self._db.sql(
            f"SELECT queue, status, count(*) FROM {{s}}.jobs WHERE {LIVE} GROUP BY queue, status"
        )
        paused_sql = self._db.sql("SELECT queue FROM {s}.paused")
        args = {"now": self._now()}
        rows = self._db.run(lambda conn: conn.execute(sql, args).fetchall())
        paused = self._db.run(lambda conn: conn.execute(paused_sql).fetchall())
        return grouped_stats(rows, [q for (q,) in paused])

    def _entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int
    ) -> list[JobEntry]:
        order = _ENTRY_ORDER.get(status, _NEWEST_FIRST)
        sql = self._db.sql(
            "SELECT id, queue, payload, status, reason, updated_at FROM {s}.jobs "
            "WHERE status = %(status)s AND (%(queue)s::text IS NULL OR queue = %(queue)s) "
            f"AND {LIVE} ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
        )
        args = {"status": status.value, "queue": queue, "now": self._now(), "limit": limit,
                "offset": offset}  # fmt: skip
        rows = self._db.run(lambda conn: conn.execute(sql, args).fetchall())
        return [
            JobEntry(id=i, queue=q, payload=bytes(p), status=JobStatus(s), reason=r, at=at)
            for i, q, p, s, r, at in rows
        ]

    def _requeue(self, items: list[tuple[str, bytes]]) -> list[str | None]:
        return self._db.run(lambda conn: self._requeue_in(conn, items))

    def _requeue_in(self, conn: Connection, items: list[tuple[str, bytes]]) -> list[str | None]:
        """One transaction (a repeat finds the jobs put back: it answers None for them)."""
        out: list[str | None] = []
        queues: list[str] = []
        with conn.transaction():
            for job_id, payload in items:
                found = self._requeue_one(conn, job_id, payload)
                out.append(found[0] if found else None)
                if found and found[0] == job_id:
                    queues.append(found[1])
            self._notify(conn, "q", sorted(set(queues)))
        return out

    def _requeue_one(self, conn: Connection, job_id: str, payload: bytes) -> tuple[str, str] | None:
        """(the id standing for the job, its queue), or None where nothing changed."""
        now = self._now()
        sql = self._db.sql(
            f"SELECT status, key, depends_on, queue FROM {{s}}.jobs WHERE id = %(id)s "
            f"AND {LIVE} FOR UPDATE"
        )
        row = conn.execute(sql, {"id": job_id, "now": now}).fetchone()
        if row is None or JobStatus(row[0]) not in REQUEUEABLE:
            return None
        _, key, deps, queue = row
        for _ in range(3):  # a producer may take the key between the look and the write
            if key is not None:  # as on enqueue: a pending job holding the key stands for it
                holder = conn.execute(self._db.sql(_HOLDER), (key, job_id)).fetchone()
                if holder is not None:
                    return str(holder[0]), queue
            try:
                with conn.transaction():
                    self._put_back(conn, job_id, payload, deps, now)
                return job_id, queue
            except UniqueViolation:
                continue
        return None

    def _put_back(
        self, conn: Connection, job_id: str, payload: bytes, deps: list[str], now: float | None
    ) -> None:
        waiting = 0
        if deps:  # each dependency still pending is waited for again; others are not
            found = {"deps": deps, "id": job_id, "now": now}
            counted = conn.execute(self._db.sql(_WAIT_FOR), found).fetchone()
            waiting = int(counted[0]) if counted is not None else 0
        status = JobStatus.SCHEDULED if waiting else JobStatus.QUEUED
        args: dict[str, object] = {"status": status.value, "payload": payload,
                                   "waiting": waiting, "now": now, "id": job_id}  # fmt: skip
        conn.execute(self._db.sql(_REQUEUE), args)

    def _pause(self, queue: str) -> None:
        sql = self._db.sql("INSERT INTO {s}.paused(queue) VALUES (%s) ON CONFLICT DO NOTHING")
        self._db.run(lambda conn: conn.execute(sql, (queue,)))

    def _resume(self, queue: str) -> None:
        sql = self._db.sql("DELETE FROM {s}.paused WHERE queue = %s")

        def resume(conn: Connection) -> None:
            with conn.transaction():
                if conn.execute(sql, (queue,)).rowcount:
                    self._notify(conn, "q", [queue])

        self._db.run(resume)

    def _purge(self, queue: str) -> int:
        return self._db.run(lambda conn: self._purge_in(conn, queue))

    def _purge_in(self, conn: Connection, queue: str) -> int:
        """One transaction (a repeat finds the jobs gone: it counts 0 for them)."""
        sql = self._db.sql(
            "DELETE FROM {s}.jobs WHERE queue = %s AND status IN ('queued', 'scheduled') "
            "RETURNING id"
        )
        with conn.transaction():
            gone = [i for (i,) in conn.execute(sql, (queue,)).fetchall()]
            # Gone like ended jobs: their dependents are counted down. A dependent in this
            # queue was queued or scheduled, so it went in the same DELETE.
            if gone:
                self._ended_early(conn, gone, ["*"])
        return len(gone)

    def _delete(self, job_ids: list[str]) -> list[JobStatus | None]:
        return self._db.run(lambda conn: self._delete_in(conn, job_ids))

    def _delete_in(self, conn: Connection, job_ids: list[str]) -> list[JobStatus | None]:
        """One transaction (a repeat finds the jobs gone: it answers None for them)."""
        find = self._db.sql(
            "SELECT status, status = 'running' AND lease_until > {s}.clock(%(now)s) "
            f"FROM {{s}}.jobs WHERE id = %(id)s AND {LIVE} FOR UPDATE"
        )
        drop = self._db.sql("DELETE FROM {s}.jobs WHERE id = %s")
        out: list[JobStatus | None] = []
        early: list[str] = []
        with conn.transaction():
            for job_id in job_ids:
                row = conn.execute(find, {"id": job_id, "now": self._now()}).fetchone()
                if row is None or row[1]:  # unknown, expired, or its live worker's
                    out.append(None)
                    continue
                status = JobStatus(row[0])  # running: its lease expired, its worker is gone
                out.append(status)
                conn.execute(drop, (job_id,))
                if not status.terminal:
                    early.append(job_id)
            # Gone before they ended (a dead worker's running one too): counted down and
            # forgotten as purge does, and their waiters woken. Ended ones have no
            # dependents left, and nobody waits for them.
            if early:
                self._ended_early(conn, early, early)
        return out

    def _workers(self) -> list[WorkerInfo]:
        sql = self._db.sql(
            "SELECT info FROM {s}.workers WHERE expires_at > {s}.clock(%(now)s) ORDER BY since"
        )
        args = {"now": self._now()}
        rows = self._db.run(lambda conn: conn.execute(sql, args).fetchall())
        return [msgspec.json.decode(r[0], type=WorkerInfo) for r in rows]

    def _read_events(self, start: int, limit: int) -> Listening[Events]:
        # Since schema version 5 the reader says how many events the log keeps: the table
        # holds more between trims (``_functions``), which the reader leaves out.
        args: tuple[int, ...] = (start, limit)
        if self._db.migrated[1] >= 5:
            args = (start, limit, self.events_kept)
        sql = self._db.sql(
            "SELECT number, body FROM {s}.read_events(" + ", ".join(["%s"] * len(args)) + ")"
        )

        def look() -> Events:
            rows = self._db.run(lambda conn: conn.execute(sql, args).fetchall())
            return [(str(n), bytes(body)) for n, body in rows]

        return Listening(self._listener, self._listener.reading, look)

    def _events_tail(self) -> int:
        sql = self._db.sql("SELECT {s}.events_tail()")
        row = self._db.run(lambda conn: conn.execute(sql).fetchone())
        return int(row[0]) if row is not None and row[0] is not None else 0

    def _warnings(self) -> list[str]:
        """What the server's settings risk."""
        sql = "SELECT current_setting('synchronous_commit'), current_setting('autovacuum')"
        row = self._db.run(lambda conn: conn.execute(sql).fetchone())
        synchronous, autovacuum = row if row is not None else ("on", "on")
        found = []
        if synchronous == "off":
            found.append(
                "PostgreSQL's synchronous_commit is off: a server crash can lose jobs it "
                "acknowledged (enqueues, results) in its last moments. Set it to on for the "
                "broker's user (ALTER ROLE ... SET synchronous_commit = on)"
            )
        if autovacuum == "off":
            found.append(
                "PostgreSQL's autovacuum is off: the rows of ended jobs are deleted, but their "
                "space is never reused, so the jobs table and its indexes grow without bound "
                "and fetches slow down. Turn it on (ALTER SYSTEM SET autovacuum = on), or "
                f"VACUUM the tables of schema {self._db.schema} every few minutes"
            )
        return found
