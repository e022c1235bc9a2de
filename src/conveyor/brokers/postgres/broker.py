"""The PostgreSQL broker: producing, consuming and job records.

The tables are in ``_schema``; the hot paths are single calls of the functions in
``_functions`` (enqueue, fetch, finish: one round trip each). Here:

* **Claiming** is ``FOR UPDATE SKIP LOCKED`` on each queue's head in the ``jobs_ready``
  partial index: workers never wait for each other, and never take the same job.
* **Fencing.** renew, finish, release and progress match ``id``, ``status = 'running'`` and
  the delivery's ``token`` in the statement that changes the row.
* **Waking without polling** (``_listen``, and the ``Listening`` watch of ``_core``): a
  blocked ``fetch`` sleeps until a notification names one of its queues, or until the next
  scheduled job or lease comes due (which the table tells it before it sleeps); a ``wait``
  until its job is named.
* **Time**: on real time, the server's clock decides leases, etas and expiry, so workers
  whose clocks disagree still agree on who holds a job (an eta travels as the time left
  until it); an injected clock (tests) passes its ``now`` to every statement instead.
* **Bounded tables**: ended jobs whose record expired are deleted in batches by every
  broker that fetches, at most every ``_SWEEP_EVERY`` s and sooner while a backlog lasts.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ..._errors import BrokerError
from ..._message import Delivery, Envelope, JobRecord, JobStatus, WorkerInfo
from .._base import CANCELLED_PENDING, CANCELLED_TTL, CANCELLED_WORKER_STOPPED
from .._port import Claimed, Finish, LeaseState
from ._admin import PostgresAdmin
from ._core import LIVE as _LIVE
from ._core import Listening
from ._db import BytesArray, Connection, TextArray
from ._enqueue import (
    ENQUEUE,
    ENQUEUE_ONE,
    check_keys,
    enqueue_one_params,
    enqueue_params,
    enqueued,
)

log = logging.getLogger("conveyor.postgres")

_HELD_ELSEWHERE = 0.01  # a due row another transaction holds: look again this soon
_SWEEP_EVERY = 30.0  # clock seconds between sweeps of expired rows
_SWEEP_BATCH = 1000  # rows per sweep transaction
_SWEEP_BATCHES = 20  # transactions per sweep; a full last one brings the next sweep near

_RECORD = "id, status, queue, result, progress, progress_note, updated_at, deliveries, reason"
_FETCH = (
    "SELECT id, queue, payload, deliveries, priority, seq, next_due, clock "
    "FROM {s}.fetch(%s::text[], %s::int, %s::float8, %s::text, %s::boolean, %s::float8)"
)
# The batches' arguments travel in binary (``%b``): a list of byte strings or text in the
# text format is quoted and escaped element by element in Python, which cost a worker's
# finishing thread half its time per job (and an enqueue of 1,000 jobs four fifths).
_FINISH = (
    "SELECT {s}.finish(%b::text[], %b::text[], %b::text[], %b::bytea[], %b::float8[], "
    "%b::text[], %b::bytea[], %b::boolean[], %b::text[], %b::bytea[], %b::int[], "
    "%b::float8[], %b::bytea[], %b::int, %b::float8, %b::float8)"
)
# A batch of several jobs without retries (a drain's every batch): the function {s}.finish
# hands such a batch to (schema version 3), called directly, without the five arrays of
# retries, all empty, that the client would dump and the server read for nothing.
_FINISH_ENDED = (
    "SELECT {s}.finish_ended(%b::text[], %b::text[], %b::text[], %b::bytea[], %b::float8[], "
    "%b::text[], %b::bytea[], %b::bytea[], %b::int, {s}.clock(%b::float8))"
)
# A worker renews each second (its answer carries cancels) but a lease with more than two
# thirds of it left is not written again: each write of lease_until (indexed: jobs_leased)
# leaves a dead row version, and renewing every held job each second made ten times the
# row versions of a renewal each third of a 30 s lease. The states are read either way,
# from the statement's snapshot (the UPDATE changes none of what is read).
# A row another transaction holds is left for the next renewal, not waited for: an open
# transaction that enqueued a job depending on this one holds it (FOR SHARE, till it ends),
# and waiting held up the renewal of every other job of the batch, whose leases ran out and
# whose jobs ran again elsewhere. Nobody takes the held job meanwhile: the reclaim skips
# locked rows too.
_RENEW = """
WITH d AS (SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS d(id, token)),
due AS (
    SELECT j.id FROM {s}.jobs j JOIN d ON j.id = d.id
    WHERE j.status = 'running' AND j.token = d.token
        AND j.lease_until < {s}.clock(%(now)s) + %(lease)s * 2 / 3
    FOR NO KEY UPDATE OF j SKIP LOCKED
),
renewed AS (
    UPDATE {s}.jobs j SET lease_until = {s}.clock(%(now)s) + %(lease)s
    FROM due WHERE j.id = due.id
)
SELECT j.id, j.token, j.cancel_requested FROM {s}.jobs j JOIN d ON j.id = d.id
WHERE j.status = 'running' AND j.token = d.token
"""
# A job whose worker let go goes to the back of its queue, unless its cancel was asked
# for: then it ends cancelled. The token stays, so a repeat is recognised (_SETTLED).
_RELEASE = f"""
UPDATE {{s}}.jobs SET
    status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    expires_at = CASE WHEN cancel_requested THEN {{s}}.clock(%(now)s) + {CANCELLED_TTL} END,
    updated_at = CASE WHEN cancel_requested THEN {{s}}.clock(%(now)s) ELSE updated_at END,
    result = CASE WHEN cancel_requested THEN NULL ELSE result END,
    reason = CASE WHEN cancel_requested THEN '{CANCELLED_WORKER_STOPPED}' ELSE reason END,
    lease_until = NULL, cancel_requested = false, seq = nextval('{{s}}.seq'),
    deliveries = greatest(deliveries - 1, 0)
WHERE id = %(id)s AND status = 'running' AND token = %(token)s
RETURNING status, queue
"""
_SETTLED = f"""SELECT 1 FROM {{s}}.jobs WHERE id = %(id)s AND token = %(token)s
    AND status <> 'running' AND {_LIVE}"""
_PROMOTE = f"""
WITH promoted AS (
    UPDATE {{s}}.jobs SET status = 'queued', payload = %(payload)s, eta = NULL,
        seq = nextval('{{s}}.seq')
    WHERE id = %(id)s AND status = 'scheduled' AND eta = 'Infinity' AND {_LIVE}
    RETURNING queue)
SELECT pg_notify(%(channel)s, 'q:' || queue) FROM promoted
"""
_PROGRESS = """UPDATE {s}.jobs SET progress = %s, progress_note = %s, updated_at = {s}.clock(%s)
    WHERE id = %s AND status = 'running' AND token = %s"""
_GET = f"SELECT {_RECORD} FROM {{s}}.jobs WHERE id = ANY(%(ids)s::text[]) AND {_LIVE}"
_CANCEL = f"""
UPDATE {{s}}.jobs SET status = 'cancelled', updated_at = {{s}}.clock(%(now)s),
    expires_at = {{s}}.clock(%(now)s) + {CANCELLED_TTL}, result = NULL,
    reason = %(reason)s, cancel_requested = false, waiting = 0
WHERE id = %(id)s
"""


def _record(row: tuple[Any, ...]) -> JobRecord:
    job_id, status, queue, result, progress, note, updated_at, deliveries, reason = row
    state = JobStatus(status)
    return JobRecord(
        id=job_id,
        status=state,
        queue=queue,
        result=bytes(result) if state.terminal and result is not None else None,
        progress=progress,
        progress_note=note,
        updated_at=float(updated_at),
        deliveries=int(deliveries),
        reason=reason,
    )


class PostgresBroker(PostgresAdmin):
    """``Conveyor("postgresql://user:password@host:5432/dbname")``: the broker on a
    PostgreSQL database (>= 13), in the schema ``?schema=`` names (``conveyor`` by default),
    migrated on open unless ``create`` is False (tools that only look: then a schema
    without Conveyor's tables is a ``ConfigurationError``, and nothing is created)."""

    _statements = {
        "enqueue": ENQUEUE.replace("%s", "%b"), "enqueue_one": ENQUEUE_ONE, "fetch": _FETCH,
        "finish": _FINISH, "finish_ended": _FINISH_ENDED, "renew": _RENEW, "release": _RELEASE,
        "settled": _SETTLED, "promote": _PROMOTE, "progress": _PROGRESS, "get": _GET,
        "cancel": _CANCEL,
    }  # fmt: skip

    # -- producing -------------------------------------------------------------------------

    def _enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes]) -> list[str]:
        kept, now, client_now = self.events_kept, self._now(), time.time()
        check_keys(envelopes, self._db.check_text)
        if len(envelopes) == 1:
            event = events[0] if events else None
            one = enqueue_one_params(envelopes[0], event, kept, now, client_now)
            sql = self._sql["enqueue_one"]
            return enqueued(self._db.run(lambda conn: conn.execute(sql, one).fetchone()))
        params = enqueue_params(envelopes, events, kept, now, client_now)
        row = self._db.run(lambda conn: conn.execute(self._sql["enqueue"], params).fetchone())
        return enqueued(row)

    def _enqueue_in(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        """Write the jobs through the caller's ``connection``, inside its transaction
        (``_transactional``): they commit or roll back with it."""
        return self._transactional.enqueue(connection, envelopes, events)

    async def _enqueue_in_async(
        self, connection: object, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        return await self._transactional.enqueue_async(connection, envelopes, events)

    # -- consuming -------------------------------------------------------------------------

    def _fetch(
        self, queues: list[str], consumer: str, count: int, lease: float
    ) -> Listening[Claimed]:
        return Listening(
            self._listener,
            lambda: self._listener.fetching(queues),
            lambda: self._claim(queues, count, lease),
        )

    def _claim(self, queues: list[str], count: int, lease: float) -> Claimed:
        """What ``{s}.fetch`` hands out, and (when that is nothing) in how many seconds
        something comes due."""
        token = secrets.token_hex(8)
        args = (queues, count, lease, token, True, self._now())
        sql = self._sql["fetch"]
        rows = self._db.run(lambda conn: conn.execute(sql, args, binary=True).fetchall())
        self._sweep()
        if rows and rows[0][0] is None:
            due, now = rows[0][6], rows[0][7]
            # due, yet not claimed: another transaction holds the row a moment
            return [], None if due is None else max(due - now, _HELD_ELSEWHERE)
        rows.sort(key=lambda r: (-r[4], r[5]))  # RETURNING gives no order: the claim's
        out = [
            Delivery(id=i, queue=q, payload=p, token=token, deliveries=d, priority=pr)
            for i, q, p, d, pr, *_ in rows
        ]
        return out, None

    def _sweep(self) -> None:
        """Delete expired records (they already read as absent) now and then. It runs
        after a claim committed, so it never raises: the claimed deliveries must reach
        their worker (else they stay running, held by nobody, until their lease runs out).
        A failure is logged once per try, and the next try is ``_SWEEP_EVERY`` s away."""
        now = self._clock.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        try:
            backlog = self._db.run(self._sweep_batches)  # deleting what expired: repeatable
        except BrokerError as exc:
            log.warning("expired job records not swept (next try in %.0f s): %s", _SWEEP_EVERY, exc)
            return
        if backlog:
            self._next_sweep = now + 1.0  # come back soon

    def _sweep_batches(self, conn: Connection) -> bool:
        """Up to ``_SWEEP_BATCHES`` batches; whether expired rows are left."""
        sweep = self._db.sql("SELECT {s}.sweep(%s, %s)")
        for _ in range(_SWEEP_BATCHES):
            row = conn.execute(sweep, (_SWEEP_BATCH, self._now())).fetchone()
            if row is None or row[0] < _SWEEP_BATCH:
                return False
        return True

    def _renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        args = {
            "now": self._now(),
            "lease": lease,
            "ids": [d.id for d in deliveries],
            "tokens": [d.token for d in deliveries],
        }
        rows = self._db.run(lambda conn: conn.execute(self._sql["renew"], args).fetchall())
        held = {(i, t): LeaseState.CANCELLED if c else LeaseState.OK for i, t, c in rows}
        return [held.get((d.id, d.token), LeaseState.LOST) for d in deliveries]

    def _finish(self, outcomes: Sequence[Finish], events: Sequence[bytes]) -> list[bool]:
        # (a status is a StrEnum: its text is its value; a reason comes from a task's
        # exception: what the database cannot store is replaced, never refused)
        ended = (
            TextArray([f.delivery.id for f in outcomes]),
            TextArray([f.delivery.token for f in outcomes]),
            TextArray([f.status for f in outcomes]),
            BytesArray([f.result for f in outcomes]),
            [f.result_ttl for f in outcomes],
            [f.reason for f in outcomes],  # made storable below
            BytesArray([f.event for f in outcomes]),
        )
        retries = [f.retry for f in outcomes]
        params: tuple[Any, ...]
        # what {s}.finish hands to finish_ended (the tests run older schema versions too)
        if len(outcomes) > 1 and not any(retries) and self._db.migrated[1] >= 3:
            sql = self._sql["finish_ended"]
            params = (*ended, BytesArray(events), self.events_kept, self._now())
        else:
            sql = self._sql["finish"]
            params = (
                *ended,
                [r is not None for r in retries],
                [r.queue if r else None for r in retries],
                [r.payload if r else None for r in retries],
                [r.priority if r else None for r in retries],
                [r.eta if r else None for r in retries],
                list(events),
                self.events_kept,
                time.time(),
                self._now(),
            )
        reasons = params[5]

        def finish(conn: Connection, storable: Callable[[str], str]) -> Any:
            args = (*params[:5], TextArray(map(storable, reasons)), *params[6:])
            return conn.execute(sql, args, binary=True).fetchone()

        row = self._db.run_storing(finish)
        return list(row[0]) if row is not None and row[0] is not None else []

    def _release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return self._db.run(lambda conn: self._release_in(conn, deliveries))

    def _release_in(self, conn: Connection, deliveries: Sequence[Delivery]) -> list[bool]:
        """One transaction (a repeat is safe: a delivery that settled answers True)."""
        done: list[bool] = []
        queued: list[str] = []
        cancelled: list[str] = []
        now = self._now()
        with conn.transaction():
            for d in deliveries:
                args = {"id": d.id, "token": d.token, "now": now}
                row = conn.execute(self._sql["release"], args).fetchone()
                if row is None:  # not ours, unless this very delivery settled it already
                    done.append(conn.execute(self._sql["settled"], args).fetchone() is not None)
                    continue
                done.append(True)
                status, queue = row
                if status == JobStatus.QUEUED:
                    queued.append(queue)
                else:  # its cancel was asked for while it ran: it ended
                    cancelled.append(d.id)
            if cancelled:
                queued += self._release_dependents(conn, cancelled)
                self._notify(conn, "d", cancelled)
            self._notify(conn, "q", sorted(set(queued)))
        return done

    def _promote(self, job_id: str, payload: bytes) -> bool:
        args = {"payload": payload, "id": job_id, "now": self._now(), "channel": self._channel}
        sql = self._sql["promote"]  # (a repeat of one that committed unseen answers False)
        return self._db.run(lambda conn: conn.execute(sql, args).fetchone() is not None)

    def _progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        sql, now = self._sql["progress"], self._now()

        def progress(conn: Connection, storable: Callable[[str], str]) -> bool:
            args = (
                value,
                None if note is None else storable(note),
                now,
                delivery.id,
                delivery.token,
            )
            return conn.execute(sql, args).rowcount == 1

        return self._db.run_storing(progress)

    # -- job records -----------------------------------------------------------------------

    def _get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        args = {"ids": list(job_ids), "now": self._now()}
        rows = self._db.run(lambda conn: conn.execute(self._sql["get"], args).fetchall())
        found = {row[0]: _record(row) for row in rows}
        return [found.get(i) for i in job_ids]

    def _wait(self, job_id: str) -> Listening[JobRecord | None]:
        return Listening(
            self._listener,
            lambda: self._listener.waiting_for(job_id),
            lambda: self._get([job_id])[0],
        )

    def _payload(self, job_id: str) -> bytes | None:
        sql = self._db.sql(f"SELECT payload FROM {{s}}.jobs WHERE id = %(id)s AND {_LIVE}")
        args = {"id": job_id, "now": self._now()}
        row = self._db.run(lambda conn: conn.execute(sql, args).fetchone())
        return None if row is None else bytes(row[0])

    def _cancel(self, job_id: str, event: bytes | None) -> JobStatus | None:
        return self._db.run(lambda conn: self._cancel_in(conn, job_id, event))

    def _cancel_in(self, conn: Connection, job_id: str, event: bytes | None) -> JobStatus | None:
        """One transaction (a repeat finds the job cancelled, or flagged: the same answer)."""
        now = self._now()
        find = self._db.sql(
            f"SELECT status FROM {{s}}.jobs WHERE id = %(id)s AND {_LIVE} FOR UPDATE"
        )
        with conn.transaction():
            row = conn.execute(find, {"id": job_id, "now": now}).fetchone()
            if row is None:
                return None
            status = JobStatus(row[0])
            if status is JobStatus.RUNNING:
                flag = "UPDATE {s}.jobs SET cancel_requested = true WHERE id = %s"
                conn.execute(self._db.sql(flag), (job_id,))
            elif status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
                status = JobStatus.CANCELLED
                args = {"id": job_id, "now": now, "reason": CANCELLED_PENDING}
                conn.execute(self._sql["cancel"], args)
                self._ended_early(conn, [job_id], [job_id])
                if event is not None:
                    self._append(conn, [event])
        return status

    # -- workers and events ----------------------------------------------------------------

    def _heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        info.seen_at = self._clock.time()
        sql = self._db.sql(
            "INSERT INTO {s}.workers(id, info, expires_at, since) "
            "VALUES (%(id)s, %(info)s, {s}.clock(%(now)s) + %(ttl)s, nextval('{s}.seq')) "
            "ON CONFLICT (id) DO UPDATE SET info = excluded.info, "
            "expires_at = excluded.expires_at"
        )
        text = msgspec.json.encode(info).decode()  # names, hosts: made storable
        now = self._now()

        def beat(conn: Connection, storable: Callable[[str], str]) -> None:
            args = {"id": info.id, "info": storable(text), "now": now, "ttl": ttl}
            conn.execute(sql, args)

        self._db.run_storing(beat)  # an upsert: safe to repeat

    def _forget_worker(self, worker_id: str) -> None:
        sql = self._db.sql("DELETE FROM {s}.workers WHERE id = %s")
        self._db.run(lambda conn: conn.execute(sql, (worker_id,)))

    def _publish(self, events: Sequence[bytes]) -> None:
        # Sent once: a repeat of an append that committed unseen would log its events twice.
        with self._db.connection() as conn:
            self._append(conn, events)
