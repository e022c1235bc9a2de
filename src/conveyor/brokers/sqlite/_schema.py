"""The SQLite storage: every table and its migrations.

One file holds everything (the broker's and the key-value store's tables), so one
``sqlite:///jobs.db`` URL is the whole deployment. One table per concern:

``meta(name, value)``
    ``schema_version``: the last migration applied (see ``MIGRATIONS``).
    ``seq``: a counter; every job gets the next value whenever it is (re)queued, which is
    the FIFO order within a priority. ``kv_version``: a counter stamped on every key-value
    write, so ``update``'s compare-and-set cannot mistake a delete-and-recreate for "no
    change" (a per-row counter would restart at 1 and fall for that ABA case). ``events``
    (v4): how many events were ever appended (see ``events``).

``jobs`` -- one row per job, whatever its state:
    ``id`` (primary key), ``queue``, ``payload`` (opaque bytes), ``priority`` (0..9),
    ``status`` (a ``JobStatus`` value), ``seq`` (see meta), ``eta`` (scheduled: not before),
    ``key`` (uniqueness key; it only counts while the job is queued, scheduled or running),
    ``token`` (the current delivery's fencing token, '' when none), ``deliveries``,
    ``lease_until`` (running: reclaimable from then on), ``cancel_requested`` (0/1, read by
    renew), ``result`` (the encoded Outcome), ``reason`` (kept with failed and dead jobs),
    ``progress``, ``progress_note``, ``updated_at``, ``expires_at`` (terminal jobs: the row
    is invisible from then on and deleted lazily, by the sweep in ``_core``), ``waiting``
    (v2: how many of the job's ``depends_on`` have not ended; a job above 0 is ``scheduled``
    with a NULL ``eta``, so nothing but the last of them ending makes it due),
    ``depends_on`` (v3: the ids the job waits for, joined by ',', so ``requeue`` can wait
    for them again as enqueue did).
    ``rowid`` is insertion order (a row is only ever inserted once; an expired one is
    deleted before its id is reused), which breaks ties the way the memory adapter's dict
    does. The ``workers`` table keeps that order too (a heartbeat updates in place).

``dependents(parent, child)`` -- v2: ``child`` waits for ``parent`` to end (``depends_on``).
    Rows are written by the child's enqueue and deleted, all of a parent's at once, by the
    transaction that makes the parent terminal, which counts each child's ``waiting`` down.
    The primary key makes "does this job have dependents?" one index lookup.

``paused(queue)`` -- v3: one row per paused queue (``pause``); the claim in ``fetch`` leaves
    their jobs queued, and ``resume`` deletes the row and wakes blocked fetches.

``events(id, body)`` -- v4: the event log (``Broker.publish``; docs/observability.md), in
    the transaction of the change the events describe (enqueue, finish, cancel) or on its
    own (publish). A row holds up to 64 events of one transaction, framed (``_eventlog``),
    and ``id`` is the number of its last event: meta's ``events`` counts every event ever
    appended, so ids never repeat, even after the rows before them were trimmed. The
    transaction that appends also deletes the rows whose events are all older than the
    newest ``events_kept``, the oldest ``TRIM_ROWS`` of them at most (``_sql``): a log
    left much longer by a lowered ``events_kept`` shrinks over the next appends.

``kv(key, value, expires_at, version)`` -- the ``KeyValue`` store's values and counters.

``locks(name, token, expires_at, fence)`` -- one row per lock name ever taken, so its
    fencing counter ``fence`` outlives every holder: a grant sets ``token`` and
    ``expires_at`` and adds one to ``fence`` in one statement; a release clears ``token``.
    A separate table keeps locks apart from user keys, as the port requires.

``workers(id, info, expires_at)`` -- heartbeats: ``info`` is the ``WorkerInfo`` as JSON.

How a connection to the file is opened and written through: ``_database``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ..._errors import ConfigurationError

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

_V4 = (
    "CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
    "INSERT INTO meta(name, value) VALUES ('events', 0)",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)

_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"


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
