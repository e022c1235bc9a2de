"""The PostgreSQL storage: every table, its migrations, and how they are applied.

Everything lives in one schema of its own (``conveyor`` unless the URL says
``?schema=NAME``), so one database can hold several deployments and the application's
tables beside them. ``{s}`` in the SQL below stands for that schema. Times are epoch
seconds (``float8``) on the broker's clock: the server's (``clock_timestamp()``) unless a
clock was injected (tests), in which case the client passes its ``now`` to every statement
(``{s}.clock``, in ``_functions``). One table per concern:

``meta(name, value)``
    ``schema_version``: the last migration applied (see ``MIGRATIONS``). ``instance``: a
    random number written once, by which a caller's own connection is recognised as one to
    this database and schema (``_transactional``).

``jobs`` -- one row per job, whatever its state:
    ``id`` (primary key), ``queue``, ``payload`` (opaque bytes), ``priority`` (0..9),
    ``status`` (a ``JobStatus`` value), ``seq`` (from the sequence ``seq``: every job takes
    the next value whenever it is (re)queued, the FIFO order within a priority), ``eta``
    (scheduled: not before; ``'Infinity'`` while parked for ``promote``; NULL while
    waiting for dependencies), ``key`` (uniqueness key), ``token`` (the current delivery's
    fencing token; kept after the delivery ends, so a repeated finish is recognised),
    ``deliveries``, ``lease_until`` (running: reclaimable from then on),
    ``cancel_requested`` (read by renew), ``result`` (the encoded Outcome), ``reason``,
    ``progress``, ``progress_note``, ``updated_at``, ``expires_at`` (ended jobs: the row is
    invisible from then on and deleted in batches by ``{s}.sweep``), ``waiting`` (how many
    of ``depends_on`` have not ended; a job above 0 is ``scheduled`` with a NULL ``eta``),
    ``depends_on`` (the ids the job waits for, so ``requeue`` can wait for them again).

    Half of each page is left free at insert (``fillfactor`` 50, since version 4), so the
    versions a claim and a finish write stay on their row's page.
    Partial indexes keep each hot path small: ``jobs_ready`` holds queued jobs only, in
    hand-out order per queue (the claim reads its head with ``FOR UPDATE SKIP LOCKED``);
    ``jobs_due`` scheduled jobs by eta, ``jobs_leased`` running jobs by lease expiry. The
    unique ``jobs_key`` holds the key of every pending (queued, scheduled, running) job: two
    producers racing with one key cannot both write (the second's insert waits for the
    first's commit, then finds the holder).

``dependents(parent, child)`` -- ``child`` waits for ``parent`` to end. Written by the
    child's enqueue (which locks the parent's row ``FOR SHARE``, so the parent cannot end
    unseen in between) and deleted, all of a parent's at once, by the transaction that
    ends the parent, which counts each child's ``waiting`` down.

``paused(queue)`` -- one row per paused queue.

``events(seq, number, body, bodies, count)`` -- the event log, inserted by the
    transaction of the change it describes, up to 32 events to a row: a lone event in
    ``body``, several in ``bodies``, how many in ``count`` (since version 3; before, one
    row per event). ``seq``: insertion order (every event takes a value of
    ``events_seq_seq``, the row the greatest of its own). ``number`` is the cursor of the
    row's last event (its events' run up to it), given after that transaction committed,
    by the next reader (``{s}.number_events``: one reader at a time, in ``seq`` order,
    from the sequence ``event_numbers``): a number is only ever given after every smaller
    one, so a transaction that commits late can never slip an event behind a cursor a
    reader already holds, and no writer waits for another (numbering at insert would make
    every writer wait for the previous one's commit). The appending transaction deletes
    the oldest rows beyond ``events_kept`` events about once every 1,024 events (64 before
    version 5), leaving the rows another transaction holds to a later trim (since version
    6: a caller's open transaction may hold the rows its enqueue's trim deleted);
    ``read_events`` reads only the rows that hold the newest ``events_kept``.

``kv(key, value, expires_at, version)`` -- the key-value store; ``version`` comes from the
    sequence ``kv_version``, so ``update``'s compare-and-set cannot mistake a
    delete-and-recreate for "no change".

``locks(name, token, expires_at, fence)`` -- one row per lock name ever taken, so its
    fencing counter ``fence`` outlives every holder.

``workers(id, info, expires_at, since)`` -- heartbeats: ``info`` is the ``WorkerInfo`` as
    JSON; ``since`` orders them by first announcement.

Migrations are numbered; all pending ones run in one transaction under a transaction-level
advisory lock keyed by the schema's name, so concurrent first users take turns and the
later ones find the work done. A database written by a newer Conveyor is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._errors import ConfigurationError
from ._functions import (
    FUNCTIONS_V1,
    FUNCTIONS_V2,
    FUNCTIONS_V3,
    FUNCTIONS_V4,
    FUNCTIONS_V5,
    FUNCTIONS_V6,
)
from ._url import channel, quoted

if TYPE_CHECKING:
    import psycopg

_V1_TABLES = (
    "CREATE SEQUENCE {s}.seq",
    "CREATE SEQUENCE {s}.kv_version",
    """CREATE TABLE {s}.jobs (
        id text PRIMARY KEY,
        queue text NOT NULL,
        payload bytea NOT NULL,
        priority smallint NOT NULL DEFAULT 0,
        status text NOT NULL,
        seq bigint NOT NULL,
        eta float8,
        key text,
        token text NOT NULL DEFAULT '',
        deliveries integer NOT NULL DEFAULT 0,
        lease_until float8,
        cancel_requested boolean NOT NULL DEFAULT false,
        result bytea,
        reason text NOT NULL DEFAULT '',
        progress float8,
        progress_note text,
        updated_at float8 NOT NULL,
        expires_at float8,
        waiting integer NOT NULL DEFAULT 0,
        depends_on text[] NOT NULL DEFAULT '{}'
    ) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02)""",
    "CREATE INDEX jobs_ready ON {s}.jobs (queue, priority DESC, seq) WHERE status = 'queued'",
    "CREATE INDEX jobs_due ON {s}.jobs (eta, seq) WHERE status = 'scheduled'",
    "CREATE INDEX jobs_leased ON {s}.jobs (lease_until) WHERE status = 'running'",
    """CREATE UNIQUE INDEX jobs_key ON {s}.jobs (key)
        WHERE key IS NOT NULL AND status IN ('queued', 'scheduled', 'running')""",
    "CREATE INDEX jobs_expiry ON {s}.jobs (expires_at) WHERE expires_at IS NOT NULL",
    """CREATE INDEX jobs_ended ON {s}.jobs (status, updated_at DESC, id DESC)
        WHERE status IN ('succeeded', 'failed', 'cancelled', 'dead')""",
    """CREATE TABLE {s}.dependents (
        parent text NOT NULL,
        child text NOT NULL,
        PRIMARY KEY (parent, child)
    )""",
    "CREATE INDEX dependents_child ON {s}.dependents (child)",
    "CREATE TABLE {s}.paused (queue text PRIMARY KEY)",
    "CREATE SEQUENCE {s}.event_numbers",
    """CREATE TABLE {s}.events (
        seq bigserial PRIMARY KEY,
        number bigint UNIQUE,
        body bytea NOT NULL
    )""",
    "CREATE INDEX events_unnumbered ON {s}.events (seq) WHERE number IS NULL",
    """CREATE TABLE {s}.kv (
        key text PRIMARY KEY,
        value bytea NOT NULL,
        expires_at float8,
        version bigint NOT NULL
    )""",
    "CREATE INDEX kv_expiry ON {s}.kv (expires_at) WHERE expires_at IS NOT NULL",
    """CREATE TABLE {s}.locks (
        name text PRIMARY KEY,
        token text,
        expires_at float8,
        fence bigint NOT NULL
    )""",
    """CREATE TABLE {s}.workers (
        id text PRIMARY KEY,
        info text NOT NULL,
        expires_at float8 NOT NULL,
        since bigint NOT NULL
    )""",
    "INSERT INTO {s}.meta(name, value) VALUES ('instance', (random() * 9e18)::bigint)",
)

# Numbered migrations; each is applied once, all pending ones in one transaction. Append,
# never edit a released one. 2: the claim may commit without waiting for the disk
# (``conveyor.claim_commit``, in ``_functions``); a batch without unique keys or
# dependencies is written by one INSERT. 3: the fetch keeps its statements' plans; the events
# of one append share rows. 4: ``jobs`` leaves half of each page free (fillfactor 50) and
# the events' rows are compressed with lz4; a notification's items are joined in one call.
# 5: the claim updates the rows it locked by their ``ctid``; the event log is trimmed once
# every 1,024 events, its readers read the newest ``events_kept``; a worker's claim and
# finish commit without waiting for the disk unless ``conveyor.worker_commit`` is ``sync``.
# 6: the trim of the event log skips the rows another transaction holds (it waited for a
# caller's open transaction whose enqueue had trimmed before).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (*_V1_TABLES, *FUNCTIONS_V1),
    FUNCTIONS_V2,
    FUNCTIONS_V3,
    FUNCTIONS_V4,
    FUNCTIONS_V5,
    FUNCTIONS_V6,
)
SCHEMA_VERSION = len(MIGRATIONS)

_META = "CREATE TABLE IF NOT EXISTS {s}.meta (name text PRIMARY KEY, value bigint NOT NULL)"
_VERSION = "SELECT value FROM {s}.meta WHERE name = 'schema_version'"


def sql(text: str, schema: str) -> str:
    """``text`` with ``{s}`` naming the schema and ``{channel}`` its notification channel."""
    return text.replace("{s}", quoted(schema)).replace("{channel}", channel(schema))


def schema_version(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> int:
    """The schema's version, 0 where it has no Conveyor tables; a plain read, no lock."""
    row = conn.execute("SELECT to_regclass(%s)", (f"{quoted(schema)}.meta",)).fetchone()
    if row is None or row[0] is None:
        return 0
    found = conn.execute(sql(_VERSION, schema)).fetchone()
    return int(str(found[0])) if found else 0


def _refuse_newer(version: int, schema: str, database: str) -> None:
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"schema {schema!r} of database {database!r} has Conveyor schema version "
            f"{version}, but this Conveyor knows versions up to {SCHEMA_VERSION}: it was "
            "written by a newer Conveyor. Upgrade conveyor here (or use another ?schema=)"
        )


def migrate(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> tuple[int, int]:
    """Bring the schema to ``SCHEMA_VERSION`` (creating it if need be); return the versions
    before and after. A current schema is only read. ``conn`` is in autocommit mode."""
    database = conn.info.dbname
    old = schema_version(conn, schema)
    _refuse_newer(old, schema, database)
    if old == SCHEMA_VERSION:
        return old, old
    with conn.transaction():
        # Keyed by the schema: first users of two schemas do not wait for each other.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('conveyor.migrate'), hashtext(%s))",
                     (schema,))  # fmt: skip
        conn.execute(sql("CREATE SCHEMA IF NOT EXISTS {s}", schema))
        conn.execute(sql(_META, schema))
        old = schema_version(conn, schema)
        _refuse_newer(old, schema, database)
        for statements in MIGRATIONS[old:]:
            for statement in statements:
                conn.execute(sql(statement, schema).encode())
        conn.execute(
            sql(
                "INSERT INTO {s}.meta(name, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                schema,
            ),
            (SCHEMA_VERSION,),
        )
    return old, SCHEMA_VERSION


def instance(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> tuple[int, str]:
    """The schema's ``instance`` number (see ``meta``) and the database's name as the server
    knows it (not as the URL gave it: a pooler may map a name onto another)."""
    row = conn.execute(
        sql("SELECT value, current_database() FROM {s}.meta WHERE name = 'instance'", schema)
    ).fetchone()
    return (int(str(row[0])), str(row[1])) if row else (0, "")
