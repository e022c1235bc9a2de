"""The SQLite storage: every table, its migrations, and how a connection to it is opened.

One file holds everything (the broker's and the key-value store's tables), so one
``sqlite:///jobs.db`` URL is the whole deployment. One table per concern:

``meta(name, value)``
    ``schema_version``: the last migration applied (see ``MIGRATIONS``).
    ``seq``: a counter; every job gets the next value whenever it is (re)queued, which is
    the FIFO order within a priority. ``kv_version``: a counter stamped on every key-value
    write, so ``update``'s compare-and-set cannot mistake a delete-and-recreate for "no
    change" (a per-row counter would restart at 1 and fall for that ABA case).

``jobs`` -- one row per job, whatever its state:
    ``id`` (primary key), ``queue``, ``payload`` (opaque bytes), ``priority`` (0..9),
    ``status`` (a ``JobStatus`` value), ``seq`` (see meta), ``eta`` (scheduled: not before),
    ``key`` (uniqueness key; it only counts while the job is queued, scheduled or running),
    ``token`` (the current delivery's fencing token, '' when none), ``deliveries``,
    ``lease_until`` (running: reclaimable from then on), ``cancel_requested`` (0/1, read by
    renew), ``result`` (the encoded Outcome), ``reason`` (kept with failed and dead jobs),
    ``progress``, ``progress_note``, ``updated_at``, ``expires_at`` (terminal jobs: the row
    is invisible from then on and deleted lazily), ``waiting`` (v2: how many of the job's
    ``depends_on`` have not ended; a job above 0 is ``scheduled`` with a NULL ``eta``, so
    nothing but the last of them ending makes it due), ``depends_on`` (v3: the ids the job
    waits for, joined by ',', so ``requeue`` can wait for them again as enqueue did).
    ``rowid`` is insertion order (a row is only ever inserted once; an expired one is
    deleted before its id is reused), which breaks ties the way the memory adapter's dict
    does. The ``workers`` table keeps that order too (a heartbeat updates in place).

``dependents(parent, child)`` -- v2: ``child`` waits for ``parent`` to end (``depends_on``).
    Rows are written by the child's enqueue and deleted, all of a parent's at once, by the
    transaction that makes the parent terminal, which counts each child's ``waiting`` down.
    The primary key makes "does this job have dependents?" one index lookup.

``paused(queue)`` -- v3: one row per paused queue (``pause``); the claim in ``fetch`` leaves
    their jobs queued, and ``resume`` deletes the row and wakes blocked fetches.

``kv(key, value, expires_at, version)`` -- the ``KeyValue`` store's values and counters.

``locks(name, token, expires_at, fence)`` -- one row per lock name ever taken, so its
    fencing counter ``fence`` outlives every holder: a grant sets ``token`` and
    ``expires_at`` and adds one to ``fence`` in one statement; a release clears ``token``.
    A separate table keeps locks apart from user keys, as the port requires.

``workers(id, info, expires_at)`` -- heartbeats: ``info`` is the ``WorkerInfo`` as JSON.

Connections: WAL, so readers never block the writer and one writer runs beside them;
``synchronous=NORMAL``: in WAL mode a commit is then durable against a crash of the process
(the OS has the WAL pages) but the last commits may be lost if the *machine* loses power
before the next checkpoint -- never corruption. ``FULL`` fsyncs the WAL on every commit,
which costs one disk flush per enqueue/finish (about 10x fewer jobs per second on ordinary
disks). A task queue that already runs jobs at least once accepts that trade; a deployment
that cannot should use Redis with AOF ``always``. ``busy_timeout`` makes a writer wait for
another process's write transaction instead of failing at once.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .._errors import BrokerError, ConfigurationError

# RETURNING (3.35) claims a batch in one statement; UPDATE ... FROM (3.33) promotes in one.
MIN_SQLITE = (3, 35, 0)

_V1 = (
    """CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        queue TEXT NOT NULL,
        payload BLOB NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        seq INTEGER NOT NULL,
        eta REAL,
        key TEXT,
        token TEXT NOT NULL DEFAULT '',
        deliveries INTEGER NOT NULL DEFAULT 0,
        lease_until REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        result BLOB,
        reason TEXT NOT NULL DEFAULT '',
        progress REAL,
        progress_note TEXT,
        updated_at REAL NOT NULL,
        expires_at REAL
    )""",
    # The claim reads one queue in hand-out order: highest priority first, then FIFO.
    "CREATE INDEX jobs_ready ON jobs(status, queue, priority DESC, seq)",
    # What comes due next: scheduled jobs by eta, running jobs by lease expiry.
    "CREATE INDEX jobs_scheduled ON jobs(status, eta)",
    "CREATE INDEX jobs_leased ON jobs(status, lease_until)",
    "CREATE INDEX jobs_key ON jobs(key) WHERE key IS NOT NULL",
    "CREATE INDEX jobs_expiry ON jobs(expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX jobs_kept ON jobs(status, updated_at)",
    """CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        expires_at REAL,
        version INTEGER NOT NULL
    )""",
    "CREATE INDEX kv_expiry ON kv(expires_at) WHERE expires_at IS NOT NULL",
    """CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        token TEXT,
        expires_at REAL,
        fence INTEGER NOT NULL
    )""",
    "CREATE TABLE workers (id TEXT PRIMARY KEY, info TEXT NOT NULL, expires_at REAL NOT NULL)",
    "INSERT INTO meta(name, value) VALUES ('seq', 0), ('kv_version', 0)",
)

# Numbered migrations; each is applied once, all pending ones in one transaction. Append,
# never edit a released one.
_V2 = (
    "ALTER TABLE jobs ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE dependents (
        parent TEXT NOT NULL,
        child TEXT NOT NULL,
        PRIMARY KEY (parent, child)
    ) WITHOUT ROWID""",
)

_V3 = (
    "ALTER TABLE jobs ADD COLUMN depends_on TEXT NOT NULL DEFAULT ''",
    "CREATE TABLE paused (queue TEXT PRIMARY KEY) WITHOUT ROWID",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3)
SCHEMA_VERSION = len(MIGRATIONS)

_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"

# A writer waiting for another process's write transaction tries again after a random pause
# that doubles from the first value up to the last (see Database._begin).
_POLL_FIRST, _POLL_MAX = 0.001, 0.01


def check_sqlite_version(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    if version < MIN_SQLITE:
        have = ".".join(map(str, version))
        raise ConfigurationError(
            f"the SQLite broker needs SQLite >= 3.35 (this Python links {have}): "
            "use a newer Python build, or redis:// instead"
        )


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version, 0 for a new file; a plain read, so it takes no write lock.

    In WAL mode a read never waits for a writer: a process opening an up-to-date file
    starts while others hold the write lock (a producer beside busy workers).
    """
    try:
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return 0
    return int(row[0]) if row else 0


def _refuse_newer(version: int, path: str) -> None:
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"{path} has schema version {version}, but this Conveyor knows versions up to "
            f"{SCHEMA_VERSION}: it was written by a newer Conveyor. Upgrade conveyor on "
            "this machine (or point it at another database file)"
        )


def migrate(
    conn: sqlite3.Connection, path: str, begin: Callable[[sqlite3.Connection], None]
) -> int:
    """Bring the file to ``SCHEMA_VERSION``; return the version it had.

    A current file is only read. Otherwise all pending migrations run in one write
    transaction, opened by ``begin`` (``BEGIN IMMEDIATE``): several processes may open a new
    (or old) file at once, the write lock makes them take turns, and the version is read
    again inside it, so the later ones find the work done.
    """
    old = schema_version(conn)
    _refuse_newer(old, path)
    if old == SCHEMA_VERSION:
        return old
    begin(conn)
    try:
        conn.execute(_META)
        old = schema_version(conn)
        _refuse_newer(old, path)
        for statements in MIGRATIONS[old:]:
            for sql in statements:
                conn.execute(sql)
        conn.execute(
            "INSERT INTO meta(name, value) VALUES ('schema_version', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (SCHEMA_VERSION,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old


def broker_error(exc: sqlite3.Error, path: str, busy_timeout: float) -> BrokerError:
    """Say what happened and what to do; sqlite3 errors never leave the adapter."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return BrokerError(
            f"the SQLite database {path} stayed locked for more than {busy_timeout:g} s: "
            "another process holds a long write transaction. Close any tool holding it "
            "(sqlite3 shell, backup), or, with many busy writers, use redis:// instead"
        )
    if "readonly" in text:
        return BrokerError(
            f"cannot write the SQLite database {path}: make the file and its directory "
            "writable by this user (SQLite creates -wal and -shm files next to it)"
        )
    if "unable to open" in text:
        return BrokerError(
            f"cannot open the SQLite database {path}: check that the directory exists and "
            "is writable"
        )
    return BrokerError(f"SQLite error on {path}: {text}")


@dataclass
class _ProcessConnections:
    """The connections of one process. A forked child must not touch its parent's."""

    pid: int
    local: threading.local = field(default_factory=threading.local)
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    # Strong references, per thread: a connection must never be closed by the garbage
    # collector in a forked child (see Database._current).
    opened: dict[threading.Thread, sqlite3.Connection] = field(default_factory=dict)


class Database:
    """Connections to one SQLite file: one per thread, opened lazily, never shared across fork.

    Write transactions of one process take turns on a mutex before ``BEGIN IMMEDIATE``:
    threads then queue in the kernel and wake at once, instead of in SQLite's busy handler,
    which sleeps in steps of up to 100 ms. A write transaction of another process is waited
    for in ``_begin``, up to ``busy_timeout``. Reads need no mutex: in WAL mode they see the
    last commit and never wait (but for rare cases, such as recovering the WAL after a
    crash, where SQLite's busy handler waits for them).
    """

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        check_sqlite_version()
        self.path = path
        self.busy_timeout = busy_timeout
        self._mutex = threading.Lock()
        self._procs = _ProcessConnections(os.getpid())
        # Connections inherited over fork are kept referenced and never closed: closing
        # them in the child could checkpoint or unlock the parent's WAL.
        self._inherited: list[sqlite3.Connection] = []
        with self._translate():
            conn = self._connect()
            try:
                self._prepare(conn)
            except BaseException:
                self.close()
                raise

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL takes an exclusive lock, and SQLite reports a clash
        # with another process doing the same at once as "locked" without calling the busy
        # handler: retry that step ourselves, within the same busy_timeout. A file already
        # in WAL mode is only asked (a read), so opening it never needs the write lock.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005 + random.random() * 0.02)
        if str(mode).lower() != "wal":
            raise ConfigurationError(
                f"{self.path} cannot use SQLite's WAL mode (journal mode stays {mode!r}): "
                "put the database on a local disk, not a network share"
            )
        migrate(conn, self.path, self._begin)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # only so close() may run on another thread
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        procs = self._current()
        procs.local.conn = conn
        procs.local.busy_handler = True
        with self._mutex:
            # Threads come and go (pools, per-job threads): close what the dead ones opened.
            for thread in [t for t in procs.opened if not t.is_alive()]:
                procs.opened.pop(thread).close()
            procs.opened[threading.current_thread()] = conn
        return conn

    def _current(self) -> _ProcessConnections:
        procs = self._procs
        if procs.pid != os.getpid():
            # A forked child. No lock taken: another thread of the parent may have held it
            # at the fork. Two child threads racing here at worst open one extra connection.
            self._inherited.extend(procs.opened.values())
            self._mutex = threading.Lock()
            self._procs = procs = _ProcessConnections(os.getpid())
        return procs

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._current().local, "conn", None)
        return conn if conn is not None else self._connect()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise broker_error(exc, self.path, self.busy_timeout) from exc

    def _busy_handler(self, conn: sqlite3.Connection, on: bool) -> None:
        """Let SQLite's busy handler wait (for up to ``busy_timeout``) or not, on this thread's
        connection; a pragma only when that changes, so a run of writes or reads costs none."""
        local = self._current().local
        if local.busy_handler != on:
            ms = int(self.busy_timeout * 1000) if on else 0
            conn.execute(f"PRAGMA busy_timeout = {ms}")
            local.busy_handler = on

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting up to ``busy_timeout`` for other processes' writes.

        Not in SQLite's busy handler: it tries again after fixed steps of up to 100 ms, so
        beside a process that takes the write lock periodically (150 ms in every 200) its
        tries can keep falling while the lock is held, and other writers take every free
        moment, for longer than any ``busy_timeout`` (a producer failed to enqueue beside
        busy workers that way). Here a try comes every few ms, at random moments.
        """
        self._busy_handler(conn, False)
        deadline: float | None = None
        pause = _POLL_FIRST
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.busy_timeout
                elif now >= deadline:
                    raise
            time.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, _POLL_MAX)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads; each statement sees the latest commit."""
        with self._translate():
            conn = self._conn()
            self._busy_handler(conn, True)
            yield conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): all of the block or none of it."""
        with self._translate(), self._current().write_lock:
            conn = self._conn()
            self._begin(conn)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (disk full, I/O).
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        procs = self._current()
        with self._mutex:
            conns, procs.opened = procs.opened, {}
        for conn in conns.values():
            conn.close()
        procs.local = threading.local()
