"""The SQLite broker's hot path: enqueue, fetch, renew, finish, release, promote, progress,
records, cancel, heartbeats and publish (see the package docstring for how it works)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from ..._message import Delivery, Envelope, JobRecord, JobStatus, WorkerInfo
from .._base import CANCELLED_PENDING, CANCELLED_TTL, PARKED
from .._port import Claimed, Finish, LeaseState
from ._admin import SQLiteAdmin
from ._core import Listening
from ._notify import FETCHERS, job_waiters
from ._sql import (
    CHUNK,
    CLAIM,
    FINISH,
    HEAD,
    INSERT,
    LIVE,
    OWNED,
    PROBE,
    PROMOTE,
    PROMOTE_PARKED,
    RECLAIM,
    RECORD,
    RELEASE,
    RETRY,
    SETTLED,
    job_record,
    placeholders,
    take_seq,
)


class SQLiteBroker(SQLiteAdmin):
    """``Conveyor("sqlite:///path.db")``: the embedded broker (see ``SQLiteCore``)."""

    # -- producing -------------------------------------------------------------------------

    def _enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes]) -> list[str]:
        ids: list[str] = []
        published: list[bytes] = []
        with self._db.write() as conn:  # an unknown dependency raises: all rolled back
            now = self._clock.time()
            for i, env in enumerate(envelopes):
                event = events[i] if events else None
                ids.append(self._enqueue_one(conn, env, now, event, published))
            self._append_events(conn, published)
        self._notify.wake(FETCHERS)
        return ids

    def _enqueue_one(
        self,
        conn: sqlite3.Connection,
        env: Envelope,
        now: float,
        event: bytes | None,
        published: list[bytes],
    ) -> str:
        """Write one job unless its id exists or its key is held; its event goes into
        ``published`` if it is written."""
        sql = f"SELECT 1 FROM jobs WHERE id = ? AND {LIVE}"
        if conn.execute(sql, (env.id, now)).fetchone() is not None:
            return env.id  # idempotent: a producer retried a batch that was written
        if env.key is not None:
            row = conn.execute(
                # One pending job per key (requeue deduplicates as this does); the newest
                # stands for the key should a file written before that hold two.
                "SELECT id FROM jobs WHERE key = ? "
                "AND status IN ('queued', 'scheduled', 'running') ORDER BY seq DESC LIMIT 1",
                (env.key,),
            ).fetchone()
            if row is not None:
                return str(row[0])
        status = JobStatus.SCHEDULED if env.eta is not None and env.eta > now else JobStatus.QUEUED
        eta, waiting = env.eta, 0
        deps = env.depends_on
        if deps and (waiting := self._wait_for_dependencies(conn, env.id, deps, now, known=True)):
            status, eta = JobStatus.SCHEDULED, None  # parked until the last one ends
        seq = take_seq(conn, 1) + 1
        # An expired row under this id makes way: the new job is a new row (and rowid).
        conn.execute("DELETE FROM jobs WHERE id = ?", (env.id,))
        conn.execute(
            INSERT,
            (
                *(env.id, env.queue, env.payload, env.priority, status, seq, eta, env.key, now),
                waiting,
                ",".join(deps),
            ),
        )
        if event is not None:
            published.append(event)
        return env.id

    # -- consuming -------------------------------------------------------------------------

    def _fetch(
        self, queues: list[str], consumer: str, count: int, lease: float
    ) -> Listening[Claimed]:
        def first() -> Claimed:
            # A look that claimed nothing says when the next job is due: a caller that
            # sleeps on its own between looks (the RabbitMQ broker's fetch) wakes then.
            got = self._claim(queues, count, lease)
            return got, None if got else self._due_in(self._probe(queues)[1])

        def again() -> Claimed:  # after a sleep: a read first, the write lock only if needed
            ready, due = self._probe(queues)
            out = self._claim(queues, count, lease) if ready else []
            return out, self._due_in(due)

        return Listening(self._notify, FETCHERS, first, again)

    def _due_in(self, due: float | None) -> float | None:
        return None if due is None else due - self._clock.time()

    def _probe(self, queues: list[str]) -> tuple[bool, float | None]:
        """Is there something to claim now (read only, no write lock)? When is the next due?"""
        with self._db.read() as conn:
            queued, eta, lease = conn.execute(
                PROBE.format(queues=placeholders(len(queues))), queues
            ).fetchone()
        # A parked job (eta PARKED, infinity) is never due: it waits for promote.
        due = min((t for t in (eta, lease) if t is not None and t != PARKED), default=None)
        return bool(queued) or (due is not None and due <= self._clock.time()), due

    def _claim(self, queues: list[str], count: int, lease: float) -> list[Delivery]:
        self._sweep()  # before the claim: an error then leaves no job claimed and unreturned
        with self._db.write() as conn:
            now = self._clock.time()
            base = take_seq(conn, 0)
            moved = conn.execute(PROMOTE, (base, now)).rowcount
            reclaimed = conn.execute(RECLAIM, (now, now, base + moved, now)).fetchall()
            take_seq(conn, moved + len(reclaimed))
            if cancelled := [i for i, st in reclaimed if st == JobStatus.CANCELLED]:
                self._release_dependents(conn, cancelled)  # claimed right below if due
            paused = {q for (q,) in conn.execute("SELECT queue FROM paused")}
            rows = []
            if live := [q for q in queues if q not in paused]:
                heads = " UNION ALL ".join([HEAD] * len(live))
                args = [now + lease, now, *(x for q in live for x in (q, count)), count]
                rows = conn.execute(CLAIM.format(heads=heads), args).fetchall()
        self._wake_ended(i for i, st in reclaimed if st == JobStatus.CANCELLED)
        # RETURNING gives no order: restore the claim's.
        rows.sort(key=lambda r: (-r[5], r[6]))
        return [
            Delivery(id=i, queue=q, payload=bytes(p), token=t, deliveries=d, priority=pr)
            for i, q, p, t, d, pr, _ in rows
        ]

    def _renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        # A worker renews each second (the answer carries cancels); a lease with more than
        # two thirds of it left is not written again, so most renewals write no page.
        states: list[LeaseState] = []
        with self._db.write() as conn:
            now = self._clock.time()
            for d in deliveries:
                row = conn.execute(
                    f"SELECT cancel_requested, lease_until FROM jobs WHERE {OWNED}",
                    (d.id, d.token),
                ).fetchone()
                if row is None:
                    states.append(LeaseState.LOST)
                    continue
                if row[1] < now + lease * 2 / 3:
                    until = (now + lease, d.id, d.token)
                    conn.execute(f"UPDATE jobs SET lease_until = ? WHERE {OWNED}", until)
                states.append(LeaseState.CANCELLED if row[0] else LeaseState.OK)
        return states

    def _finish(self, outcomes: Sequence[Finish], events: Sequence[bytes]) -> list[bool]:
        done: list[bool] = []
        ended: list[str] = []  # jobs this call made terminal
        published = list(events)  # then the events of the outcomes recorded
        with self._db.write() as conn:
            now = self._clock.time()
            for f in outcomes:
                done.append(self._finish_one(conn, f, now, ended, published))
            due = self._release_dependents(conn, ended) if ended else 0
            self._append_events(conn, published)
        self._wake_ended(f.delivery.id for f, ok in zip(outcomes, done, strict=True) if ok)
        if due or any(ok and f.retry is not None for f, ok in zip(outcomes, done, strict=True)):
            self._notify.wake(FETCHERS)
        return done

    def _finish_one(
        self,
        conn: sqlite3.Connection,
        f: Finish,
        now: float,
        ended: list[str],
        published: list[bytes],
    ) -> bool:
        d, env = f.delivery, f.retry
        if env is None:
            record = (f.status, f.result, f.reason, now + f.result_ttl, now)
            recorded = conn.execute(FINISH, (*record, d.id, d.token)).rowcount == 1
            if recorded and f.status.terminal:
                ended.append(d.id)
        else:
            later = env.eta is not None and env.eta > now
            status = JobStatus.SCHEDULED if later else JobStatus.QUEUED
            seq = take_seq(conn, 1) + 1
            args = (status, env.queue, env.payload, env.priority, env.eta, seq, f.result, now)
            recorded = conn.execute(RETRY, (*args, d.id, d.token)).rowcount == 1
        if not recorded:
            return self._settled(conn, d, now)  # a repeat publishes nothing again
        if f.event is not None:
            published.append(f.event)
        return True

    @staticmethod
    def _settled(conn: sqlite3.Connection, d: Delivery, now: float) -> bool:
        """This very delivery already finished or released the job (a repeated call)."""
        return conn.execute(SETTLED, (d.id, d.token, now)).fetchone() is not None

    def _release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        with self._db.write() as conn:
            now = self._clock.time()
            base = take_seq(conn, len(deliveries))
            states = [
                conn.execute(RELEASE, (now, now, base + i, d.token, d.id, d.token)).fetchone()
                for i, d in enumerate(deliveries, 1)
            ]
            repeated = [
                st is None and self._settled(conn, d, now)
                for st, d in zip(states, deliveries, strict=True)
            ]
            cancelled = [
                d.id
                for st, d in zip(states, deliveries, strict=True)
                if st is not None and st[0] == JobStatus.CANCELLED
            ]
            due = self._release_dependents(conn, cancelled) if cancelled else 0
        if due or any(st is not None and st[0] == JobStatus.QUEUED for st in states):
            self._notify.wake(FETCHERS)
        ended = (d.id for d, st in zip(deliveries, states, strict=True) if st and st[0] != "queued")
        self._wake_ended(ended)
        return [st is not None or again for st, again in zip(states, repeated, strict=True)]

    def _promote(self, job_id: str, payload: bytes) -> bool:
        with self._db.write() as conn:
            now = self._clock.time()
            seq = take_seq(conn, 1) + 1
            done = conn.execute(PROMOTE_PARKED, (payload, seq, job_id, PARKED, now)).rowcount
        if done:
            self._notify.wake(FETCHERS)
        return done == 1

    def _progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET progress = ?, progress_note = ?, updated_at = ? WHERE {OWNED}",
                (value, note, self._clock.time(), delivery.id, delivery.token),
            )
            return cur.rowcount == 1

    # -- job records -----------------------------------------------------------------------

    def _get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        found: dict[str, JobRecord] = {}
        with self._db.read() as conn:
            now = self._clock.time()
            for start in range(0, len(job_ids), CHUNK):
                chunk = list(job_ids[start : start + CHUNK])
                sql = (
                    f"SELECT {RECORD} FROM jobs WHERE id IN ({placeholders(len(chunk))}) AND {LIVE}"
                )
                for row in conn.execute(sql, (*chunk, now)):
                    found[row[0]] = job_record(row)
        return [found.get(i) for i in job_ids]

    def _wait(self, job_id: str) -> Listening[JobRecord | None]:
        return Listening(self._notify, job_waiters(job_id), lambda: self._get([job_id])[0])

    def _cancel(self, job_id: str, event: bytes | None) -> JobStatus | None:
        due = 0
        with self._db.write() as conn:
            now = self._clock.time()
            row = conn.execute(
                f"SELECT status FROM jobs WHERE id = ? AND {LIVE}", (job_id, now)
            ).fetchone()
            if row is None:
                return None
            status = JobStatus(row[0])
            if status is JobStatus.RUNNING:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            elif status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
                status = JobStatus.CANCELLED
                conn.execute(
                    "UPDATE jobs SET status = ?, updated_at = ?, expires_at = ?, result = NULL, "
                    "reason = ?, cancel_requested = 0, waiting = 0 WHERE id = ?",
                    (status, now, now + CANCELLED_TTL, CANCELLED_PENDING, job_id),
                )
                due = self._release_dependents(conn, [job_id])
                self._forget_dependencies(conn, [job_id])
                self._append_events(conn, [event] if event is not None else [])
        if due:
            self._notify.wake(FETCHERS)
        if status is JobStatus.CANCELLED:
            self._wake_ended([job_id])
        return status

    def _payload(self, job_id: str) -> bytes | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT payload FROM jobs WHERE id = ? AND {LIVE}", (job_id, self._clock.time())
            ).fetchone()
        return None if row is None else bytes(row[0])

    # -- workers and events ----------------------------------------------------------------

    def _heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        with self._db.write() as conn:
            now = self._clock.time()
            info.seen_at = now
            conn.execute(
                "INSERT INTO workers(id, info, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET info = excluded.info, "
                "expires_at = excluded.expires_at",
                (info.id, msgspec.json.encode(info).decode(), now + ttl),
            )

    def _forget_worker(self, worker_id: str) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def _publish(self, events: Sequence[bytes]) -> None:
        with self._db.write() as conn:
            self._append_events(conn, events)
