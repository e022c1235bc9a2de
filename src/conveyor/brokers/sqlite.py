"""The embedded SQLite broker: the default (``sqlite:///./conveyor.db``), for several worker
processes and threads on one machine.

The tables, pragmas and migrations are in ``_sqlite_schema``. Here:

* **Atomic steps.** Every multi-step operation is one ``BEGIN IMMEDIATE`` transaction:
  fetch (promote due scheduled jobs + reclaim expired leases + claim a batch with one
  ``UPDATE ... WHERE id IN (SELECT ... ORDER BY priority DESC, seq LIMIT n) RETURNING``),
  finish, release, requeue, cancel, enqueue. Nothing is checked in Python in one
  transaction and acted on in another.
* **Fencing.** renew, finish, release and progress match ``id``, ``status = 'running'`` and
  the delivery's ``token`` in the same ``UPDATE`` that changes the row.
* **Waking without polling.** SQLite cannot notify another process, so we do it beside the
  file: in ``<db>.notify/`` every blocked ``fetch`` binds a unix datagram socket named
  ``f.<random>`` and every ``wait(job_id)`` one named ``j.<hash of id>.<random>``. After a
  commit that makes work available (enqueue, retry, release, requeue, promote) the writer
  sends one byte to every ``f.*`` socket; after a job ends, to that job's ``j.*`` sockets
  only (after a purge, to every ``j.*``). A socket whose process died refuses the datagram
  and is removed. A waiter binds *before* its last look at the table, so a commit cannot
  slip between the look and the sleep. It still looks again every ``_SAFETY_NET`` s (a lost
  datagram, a full buffer) and when a scheduled job or a lease comes due, which the table
  tells it. Measured: a blocked fetch in another process returns with the job about 1 ms
  after the enqueue commits (worst of 20: 5 ms).
  Alternatives were worse: polling the file's mtime or ``PRAGMA data_version`` is a sleep
  loop; inotify is Linux-only and not in the standard library; FIFOs behave the same but
  need the O_RDWR trick to avoid EOF spins.
* **Events** (the ``events`` table, see ``_sqlite_schema``) are inserted in the transaction
  of the change they describe, so a written job and its ``job.enqueued`` commit together;
  those of one transaction share rows (``_eventlog``): an insert per 64 events, not one
  per event (a finish of 100 jobs with two events each cost 12 µs per job more than
  without events with a row per event, 2-4 µs more so). Readers poll the table (every
  ``_EVENT_POLL`` s while they block): a writer does nothing for them, however many.
* **Connections** (``_sqlite_schema.Database``): one per thread, and one write transaction
  at a time per process behind a mutex. Measured with 8 threads enqueue+fetch+finish on one
  broker: with the mutex every thread progresses (276-337 cycles each, worst wait 0.1 s);
  without it SQLite's sleeping busy handler starved one thread to a single cycle in 2 s.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Self, TypeVar
from urllib.parse import unquote

import msgspec

from .._clock import Clock
from .._errors import BrokerError, InvalidURL
from .._message import (
    Delivery,
    Envelope,
    JobEntry,
    JobRecord,
    JobStatus,
    QueueStats,
    WorkerInfo,
)
from ..stores.sqlite import SQLiteKV
from ._admin import Events
from ._base import (
    CANCELLED_PENDING,
    CANCELLED_TTL,
    CANCELLED_WORKER_STOPPED,
    EVENTS_KEPT,
    PARKED,
    REQUEUEABLE,
    BrokerOptions,
    unknown_dependency,
)
from ._eventlog import numbered, records
from ._port import Broker, Claimed, Finish, LeaseState
from ._sqlite_notify import ANY_JOB, FETCHERS, Notifier, job_waiters
from ._sqlite_schema import Database

_SAFETY_NET = 0.5  # longest sleep without looking at the table
_SWEEP_EVERY = 30.0  # clock seconds between lazy deletions of expired rows
T = TypeVar("T")
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_RECORD = "id, status, queue, result, progress, progress_note, updated_at, deliveries, reason"
_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit
_EVENT_POLL = 0.05  # how often a blocked event reader looks at the table


def sqlite_path(url: str) -> str:
    """The file path in a ``sqlite://`` URL (three slashes: relative; four: absolute)."""
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    how = "write sqlite:///relative/path.db (three slashes) or sqlite:////absolute/path.db (four)"
    if not sep or scheme.lower() != "sqlite":
        raise InvalidURL(f"bad SQLite URL {url!r}: {how}")
    if rest.lstrip("/") == ":memory:":
        raise InvalidURL(
            f"{url!r}: an in-memory SQLite database cannot be shared with worker processes; "
            "use memory:// for one process (tests), or a file such as sqlite:///./conveyor.db"
        )
    if not rest.startswith("/"):
        raise InvalidURL(f"bad SQLite URL {url!r}: a host is not allowed; {how}")
    path = unquote(rest[1:])
    if any(c in rest for c in "?#") or "\x00" in path:
        raise InvalidURL(f"bad SQLite URL {url!r}: options are not supported; {how}")
    if not path or path.endswith("/"):
        raise InvalidURL(f"bad SQLite URL {url!r}: name a database file; {how}")
    return path


# -- the broker ----------------------------------------------------------------------------------

_INSERT = """
INSERT INTO jobs(id, queue, payload, priority, status, seq, eta, key, updated_at, waiting,
    depends_on)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# Jobs that ended take their dependents along (one primary-key lookup per job, one
# statement per finished batch); each is counted down, and the last count makes it due.
_TAKE_DEPENDENTS = "DELETE FROM dependents WHERE parent IN ({marks}) RETURNING child"
_COUNT_DOWN = """
UPDATE jobs SET waiting = waiting - 1,
    status = CASE WHEN waiting = 1 THEN 'queued' ELSE status END,
    seq = CASE WHEN waiting = 1 THEN ? ELSE seq END
WHERE id = ? AND status = 'scheduled' AND waiting > 0
RETURNING waiting
"""
# Due scheduled jobs, then expired leases, go to the back of their queue in that order.
_PROMOTE = """
UPDATE jobs SET status = 'queued', seq = ? + due.n
FROM (SELECT id, row_number() OVER (ORDER BY eta, seq) AS n
      FROM jobs WHERE status = 'scheduled' AND eta <= ?) AS due
WHERE jobs.id = due.id
"""
# A job cancelled while it ran is not run again once its worker is gone: it ends cancelled.
_ABANDONED = f"""
    status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    expires_at = CASE WHEN cancel_requested THEN ? + {CANCELLED_TTL} END,
    updated_at = CASE WHEN cancel_requested THEN ? ELSE updated_at END,
    result = CASE WHEN cancel_requested THEN NULL ELSE result END,
    reason = CASE WHEN cancel_requested THEN '{CANCELLED_WORKER_STOPPED}' ELSE reason END,
    token = '', lease_until = NULL, cancel_requested = 0
"""
_RECLAIM = f"""
UPDATE jobs SET {_ABANDONED}, seq = ? + due.n
FROM (SELECT id, row_number() OVER (ORDER BY rowid) AS n
      FROM jobs WHERE status = 'running' AND lease_until <= ?) AS due
WHERE jobs.id = due.id
RETURNING id, status
"""
# Each queue's head comes from its index in order; merging a few heads beats sorting
# every queued job of several queues.
_HEAD = """SELECT * FROM (SELECT id, priority, seq FROM jobs WHERE status = 'queued'
    AND queue = ? ORDER BY priority DESC, seq LIMIT ?)"""
_CLAIM = """
UPDATE jobs SET status = 'running', token = lower(hex(randomblob(8))),
    deliveries = deliveries + 1, lease_until = ?, updated_at = ?
WHERE id IN (SELECT id FROM ({heads}) ORDER BY priority DESC, seq LIMIT ?)
RETURNING id, queue, payload, token, deliveries, priority, seq
"""
_PROBE = """
SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued' AND queue IN ({queues})
        AND queue NOT IN (SELECT queue FROM paused)),
       (SELECT min(eta) FROM jobs WHERE status = 'scheduled'),
       (SELECT min(lease_until) FROM jobs WHERE status = 'running')
"""
_PROMOTE_PARKED = f"""
UPDATE jobs SET status = 'queued', payload = ?, eta = NULL, seq = ?
WHERE id = ? AND status = 'scheduled' AND eta = ? AND {_LIVE}
"""
_OWNED = "id = ? AND status = 'running' AND token = ?"
# Finish and release keep the delivery's token on the row (fencing looks at running jobs
# only), so a repeat of the same call is recognised as already settled (_SETTLED).
_FINISH = f"""
UPDATE jobs SET status = ?, result = ?, reason = ?, expires_at = ?,
    lease_until = NULL, cancel_requested = 0, updated_at = ?
WHERE {_OWNED}
"""
_SETTLED = f"SELECT 1 FROM jobs WHERE id = ? AND token = ? AND status != 'running' AND {_LIVE}"
# A retry keeps the row's uniqueness key: the job is still pending under it.
_RETRY = f"""
UPDATE jobs SET status = ?, queue = ?, payload = ?, priority = ?, eta = ?, seq = ?,
    result = ?, deliveries = 0, lease_until = NULL, cancel_requested = 0,
    updated_at = ?
WHERE {_OWNED}
"""
_RELEASE = f"""
UPDATE jobs SET {_ABANDONED}, seq = ?, deliveries = max(deliveries - 1, 0), token = ?
WHERE {_OWNED}
RETURNING status
"""
# A failed, dead or cancelled job back as a fresh one (its key and dependencies: _requeue_one).
_REQUEUE = """
UPDATE jobs SET status = ?, payload = ?, seq = ?, waiting = ?, eta = NULL, token = '',
    lease_until = NULL, expires_at = NULL, result = NULL, reason = '', deliveries = 0,
    progress = NULL, progress_note = NULL, cancel_requested = 0, updated_at = ?
WHERE id = ?
"""
_PENDING_KEY = """SELECT id FROM jobs WHERE key = ? AND id != ?
    AND status IN ('queued', 'scheduled', 'running') LIMIT 1"""
# The order of each status in ``entries`` (see the port's contract).
_ENTRY_ORDER = {
    JobStatus.QUEUED: "priority DESC, seq",
    JobStatus.SCHEDULED: "coalesce(eta, 9e999), id",  # a waiting job's eta is NULL: last
}
_NEWEST_FIRST = "updated_at DESC, id DESC"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _take_seq(conn: sqlite3.Connection, n: int) -> int:
    """Reserve ``n`` queue positions; returns the one before the first."""
    row = conn.execute(
        "UPDATE meta SET value = value + ? WHERE name = 'seq' RETURNING value - ?", (n, n)
    ).fetchone()
    return int(row[0])


def _record(row: tuple[Any, ...]) -> JobRecord:
    job_id, status, queue, result, progress, note, updated_at, deliveries, reason = row
    state = JobStatus(status)
    return JobRecord(
        id=str(job_id),
        status=state,
        queue=str(queue),
        result=bytes(result) if state.terminal and isinstance(result, bytes) else None,
        progress=None if progress is None else float(progress),
        progress_note=None if note is None else str(note),
        updated_at=float(updated_at),
        deliveries=int(deliveries),
        reason=str(reason),
    )


class _Listening(Generic[T]):
    """A ``Watch`` on the notify sockets (see the module docstring). ``look`` is a plain
    look; the first sleep binds the socket of ``channel`` and looks again at once (the bind
    comes before that look, so a commit after it wakes the sleep after it); later sleeps
    wait for a datagram, up to ``_SAFETY_NET``. ``again``: the look after a sleep, if not
    ``look``."""

    def __init__(
        self,
        notify: Notifier,
        channel: str,
        look: Callable[[], T],
        again: Callable[[], T] | None = None,
    ) -> None:
        self._notify, self._channel = notify, channel
        self.look = look
        self._again = again or look
        self._stack = contextlib.ExitStack()
        self._listener: Any = None

    def sleep_then_look(self, seconds: float) -> T:
        if self._listener is None:
            self._listener = self._stack.enter_context(self._notify.listen(self._channel))
        else:
            self._listener.wait(min(seconds, _SAFETY_NET))
        return self._again()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()


class _Polling(Generic[T]):
    """A ``Watch`` that looks every ``_EVENT_POLL`` s (event readers: a writer does nothing
    for them, however many)."""

    def __init__(self, look: Callable[[], T]) -> None:
        self.look = look

    def sleep_then_look(self, seconds: float) -> T:
        time.sleep(min(seconds, _EVENT_POLL))
        return self.look()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class SQLiteBroker(Broker):
    """The broker on the SQLite file at ``path``, made (with its missing folders) unless
    ``create`` is False: then a missing file raises ``ConfigurationError`` naming the path,
    and nothing is created (tools that only read). The files' modes, and how a file deleted
    or replaced under the process is noticed (``BrokerGone``): ``_sqlite_file``."""

    def __init__(
        self,
        path: str,
        clock: Clock | None = None,
        *,
        busy_timeout: float = 5.0,
        create: bool = True,
        events_kept: int = EVENTS_KEPT,
    ):
        super().__init__("sqlite:///" + path, clock=clock, events_kept=events_kept)
        self.path = os.path.abspath(path)  # threads open connections later, maybe elsewhere
        self._db = Database(self.path, busy_timeout, create=create, given=path)
        try:
            self._notify = Notifier(self.path, create=create)
        except BrokerError:
            self._db.close()
            raise
        self._kv = SQLiteKV(self._db, self._clock)
        self._next_sweep = 0.0

    @classmethod
    def from_url(cls, url: str, options: BrokerOptions) -> Self:
        return cls(
            sqlite_path(url),
            options.clock,
            create=options.create,
            events_kept=options.events_kept,
        )

    @property
    def kv(self) -> SQLiteKV:
        return self._kv

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

    @staticmethod
    def _wait_for_dependencies(
        conn: sqlite3.Connection, job_id: str, deps: Sequence[str], now: float, *, known: bool
    ) -> int:
        """Register the job as a dependent of each dependency not ended yet; how many. An
        unknown one raises with ``known`` (enqueue), else it is not waited for (requeue)."""
        waiting = 0
        for dep in deps:
            row = conn.execute(
                f"SELECT status FROM jobs WHERE id = ? AND {_LIVE}", (dep, now)
            ).fetchone()
            if row is None and known:
                raise unknown_dependency(job_id, dep)
            if row is not None and not JobStatus(row[0]).terminal:
                waiting += conn.execute(
                    "INSERT OR IGNORE INTO dependents(parent, child) VALUES (?, ?)", (dep, job_id)
                ).rowcount
        return waiting

    def _release_dependents(self, conn: sqlite3.Connection, job_ids: Sequence[str]) -> int:
        """These jobs just ended (same transaction): count their dependents down; how many
        are due now."""
        children = []
        for start in range(0, len(job_ids), _CHUNK):
            chunk = job_ids[start : start + _CHUNK]
            sql = _TAKE_DEPENDENTS.format(marks=_marks(len(chunk)))
            children += conn.execute(sql, chunk).fetchall()
        due = 0
        base = _take_seq(conn, len(children)) if children else 0
        for i, (child,) in enumerate(children, 1):
            row = conn.execute(_COUNT_DOWN, (base + i, child)).fetchone()
            due += row is not None and row[0] == 0
        return due

    def _forget_dependencies(self, conn: sqlite3.Connection, job_ids: Sequence[str]) -> None:
        """These jobs left before their dependencies ended (purged, cancelled): the
        dependencies forget them, so an id enqueued again is counted once, in time."""
        for start in range(0, len(job_ids), _CHUNK):
            chunk = job_ids[start : start + _CHUNK]
            conn.execute(f"DELETE FROM dependents WHERE child IN ({_marks(len(chunk))})", chunk)

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
        sql = f"SELECT 1 FROM jobs WHERE id = ? AND {_LIVE}"
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
        seq = _take_seq(conn, 1) + 1
        # An expired row under this id makes way: the new job is a new row (and rowid).
        conn.execute("DELETE FROM jobs WHERE id = ?", (env.id,))
        conn.execute(
            _INSERT,
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
    ) -> _Listening[Claimed]:
        def again() -> Claimed:  # after a sleep: a read first, the write lock only if needed
            ready, due = self._probe(queues)
            out = self._claim(queues, count, lease) if ready else []
            return out, None if due is None else due - self._clock.time()

        return _Listening(
            self._notify, FETCHERS, lambda: (self._claim(queues, count, lease), None), again
        )

    def _probe(self, queues: list[str]) -> tuple[bool, float | None]:
        """Is there something to claim now (read only, no write lock)? When is the next due?"""
        with self._db.read() as conn:
            queued, eta, lease = conn.execute(
                _PROBE.format(queues=_marks(len(queues))), queues
            ).fetchone()
        # A parked job (eta PARKED, infinity) is never due: it waits for promote.
        due = min((t for t in (eta, lease) if t is not None and t != PARKED), default=None)
        return bool(queued) or (due is not None and due <= self._clock.time()), due

    def _claim(self, queues: list[str], count: int, lease: float) -> list[Delivery]:
        with self._db.write() as conn:
            now = self._clock.time()
            swept = self._sweep(conn, now)
            base = _take_seq(conn, 0)
            moved = conn.execute(_PROMOTE, (base, now)).rowcount
            reclaimed = conn.execute(_RECLAIM, (now, now, base + moved, now)).fetchall()
            _take_seq(conn, moved + len(reclaimed))
            if cancelled := [i for i, st in reclaimed if st == JobStatus.CANCELLED]:
                self._release_dependents(conn, cancelled)  # claimed right below if due
            paused = {q for (q,) in conn.execute("SELECT queue FROM paused")}
            rows = []
            if live := [q for q in queues if q not in paused]:
                heads = " UNION ALL ".join([_HEAD] * len(live))
                args = [now + lease, now, *(x for q in live for x in (q, count)), count]
                rows = conn.execute(_CLAIM.format(heads=heads), args).fetchall()
        if swept:
            self._notify.sweep()
        self._wake_ended(i for i, st in reclaimed if st == JobStatus.CANCELLED)
        # RETURNING gives no order: restore the claim's.
        rows.sort(key=lambda r: (-r[5], r[6]))
        return [
            Delivery(id=i, queue=q, payload=bytes(p), token=t, deliveries=d, priority=pr)
            for i, q, p, t, d, pr, _ in rows
        ]

    def _sweep(self, conn: sqlite3.Connection, now: float) -> bool:
        """Delete expired rows now and then; every read already treats them as absent."""
        if now < self._next_sweep:
            return False
        self._next_sweep = now + _SWEEP_EVERY
        conn.execute("DELETE FROM jobs WHERE expires_at <= ?", (now,))
        conn.execute("DELETE FROM workers WHERE expires_at <= ?", (now,))
        self._kv.sweep(conn, now)
        return True

    def _wake_ended(self, job_ids: Iterable[str]) -> None:
        for job_id in dict.fromkeys(job_ids):
            self._notify.wake(job_waiters(job_id))

    def _renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        states: list[LeaseState] = []
        with self._db.write() as conn:
            until = self._clock.time() + lease
            for d in deliveries:
                row = conn.execute(
                    f"UPDATE jobs SET lease_until = ? WHERE {_OWNED} RETURNING cancel_requested",
                    (until, d.id, d.token),
                ).fetchone()
                if row is None:
                    states.append(LeaseState.LOST)
                else:
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
            recorded = conn.execute(_FINISH, (*record, d.id, d.token)).rowcount == 1
            if recorded and f.status.terminal:
                ended.append(d.id)
        else:
            later = env.eta is not None and env.eta > now
            status = JobStatus.SCHEDULED if later else JobStatus.QUEUED
            seq = _take_seq(conn, 1) + 1
            args = (status, env.queue, env.payload, env.priority, env.eta, seq, f.result, now)
            recorded = conn.execute(_RETRY, (*args, d.id, d.token)).rowcount == 1
        if not recorded:
            return self._settled(conn, d, now)  # a repeat publishes nothing again
        if f.event is not None:
            published.append(f.event)
        return True

    @staticmethod
    def _settled(conn: sqlite3.Connection, d: Delivery, now: float) -> bool:
        """This very delivery already finished or released the job (a repeated call)."""
        return conn.execute(_SETTLED, (d.id, d.token, now)).fetchone() is not None

    def _release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        with self._db.write() as conn:
            now = self._clock.time()
            base = _take_seq(conn, len(deliveries))
            states = [
                conn.execute(_RELEASE, (now, now, base + i, d.token, d.id, d.token)).fetchone()
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
            seq = _take_seq(conn, 1) + 1
            done = conn.execute(_PROMOTE_PARKED, (payload, seq, job_id, PARKED, now)).rowcount
        if done:
            self._notify.wake(FETCHERS)
        return done == 1

    def _progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET progress = ?, progress_note = ?, updated_at = ? WHERE {_OWNED}",
                (value, note, self._clock.time(), delivery.id, delivery.token),
            )
            return cur.rowcount == 1

    # -- job records -----------------------------------------------------------------------

    def _get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        found: dict[str, JobRecord] = {}
        with self._db.read() as conn:
            now = self._clock.time()
            for start in range(0, len(job_ids), _CHUNK):
                chunk = list(job_ids[start : start + _CHUNK])
                sql = f"SELECT {_RECORD} FROM jobs WHERE id IN ({_marks(len(chunk))}) AND {_LIVE}"
                for row in conn.execute(sql, (*chunk, now)):
                    found[row[0]] = _record(row)
        return [found.get(i) for i in job_ids]

    def _wait(self, job_id: str) -> _Listening[JobRecord | None]:
        return _Listening(self._notify, job_waiters(job_id), lambda: self._get([job_id])[0])

    def _cancel(self, job_id: str, event: bytes | None) -> JobStatus | None:
        due = 0
        with self._db.write() as conn:
            now = self._clock.time()
            row = conn.execute(
                f"SELECT status FROM jobs WHERE id = ? AND {_LIVE}", (job_id, now)
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
                f"SELECT payload FROM jobs WHERE id = ? AND {_LIVE}", (job_id, self._clock.time())
            ).fetchone()
        return None if row is None else bytes(row[0])

    # -- operations ------------------------------------------------------------------------

    def _stats(self) -> list[QueueStats]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT queue, status, count(*) FROM jobs WHERE {_LIVE} GROUP BY queue, status",
                (self._clock.time(),),
            ).fetchall()
            paused = conn.execute("SELECT queue FROM paused").fetchall()
        by_queue = {q: QueueStats(q, paused=True) for (q,) in paused}
        for queue, status, n in rows:
            st = by_queue.setdefault(queue, QueueStats(queue))
            setattr(st, JobStatus(status).value, n)
        return list(by_queue.values())

    def _entries(
        self, status: JobStatus, queue: str | None, limit: int, offset: int
    ) -> list[JobEntry]:
        sql = (
            f"SELECT id, queue, payload, status, reason, updated_at FROM jobs "
            f"WHERE status = ? AND (? IS NULL OR queue = ?) AND {_LIVE} "
            f"ORDER BY {_ENTRY_ORDER.get(status, _NEWEST_FIRST)} LIMIT ? OFFSET ?"
        )
        with self._db.read() as conn:
            rows = conn.execute(sql, (status, queue, queue, self._clock.time(), limit, offset))
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
            f"SELECT status, key, depends_on FROM jobs WHERE id = ? AND {_LIVE}", (job_id, now)
        ).fetchone()
        if row is None or JobStatus(row[0]) not in REQUEUEABLE:
            return None
        _, key, deps = row
        if key is not None:  # as on enqueue: a pending job holding the key stands for it
            holder = conn.execute(_PENDING_KEY, (key, job_id)).fetchone()
            if holder is not None:
                return str(holder[0])
        waiting = 0
        if deps:
            waiting = self._wait_for_dependencies(conn, job_id, deps.split(","), now, known=False)
        status = JobStatus.SCHEDULED if waiting else JobStatus.QUEUED
        seq = _take_seq(conn, 1) + 1
        conn.execute(_REQUEUE, (status, payload, seq, waiting, now, job_id))
        return job_id

    def _pause(self, queue: str) -> None:
        with self._db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO paused(queue) VALUES (?)", (queue,))

    def _resume(self, queue: str) -> None:
        with self._db.write() as conn:
            gone = conn.execute("DELETE FROM paused WHERE queue = ?", (queue,))
        if gone.rowcount:
            self._notify.wake(FETCHERS)

    def _paused(self) -> list[str]:
        with self._db.read() as conn:
            return [q for (q,) in conn.execute("SELECT queue FROM paused")]

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

    def _workers(self) -> list[WorkerInfo]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT info FROM workers WHERE expires_at > ? ORDER BY rowid",
                (self._clock.time(),),
            ).fetchall()
        return [msgspec.json.decode(r[0], type=WorkerInfo) for r in rows]

    def _forget_worker(self, worker_id: str) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    # -- events ----------------------------------------------------------------------------

    def _append_events(self, conn: sqlite3.Connection, events: Sequence[bytes]) -> None:
        """Append events in this transaction, and drop the rows older than the newest
        ``events_kept``."""
        if not events:
            return
        last = int(
            conn.execute(
                "UPDATE meta SET value = value + ? WHERE name = 'events' RETURNING value",
                (len(events),),
            ).fetchone()[0]
        )
        conn.executemany("INSERT INTO events(id, body) VALUES (?, ?)", records(events, last))
        conn.execute("DELETE FROM events WHERE id <= ?", (last - self.events_kept,))

    def _publish(self, events: Sequence[bytes]) -> None:
        with self._db.write() as conn:
            self._append_events(conn, events)

    def _read_events(self, start: int, limit: int) -> _Polling[Events]:
        def look() -> Events:
            with self._db.read() as conn:  # rows hold one event or more: limit rows is enough
                rows = conn.execute(
                    "SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (start, limit)
                ).fetchall()
            return numbered(((i, bytes(body)) for i, body in rows), start, limit)

        return _Polling(look)

    def _events_tail(self) -> int:
        with self._db.read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'events'").fetchone()
        return int(row[0])

    def _close(self) -> None:
        self._db.close()
        self._notify.close()
