"""Connections to the SQLite file: one per thread, one write transaction at a time per
process, ``sqlite3`` errors translated where they are raised (``Database.read`` and
``write``), and the file watched (``_file``).

Connections: WAL, so readers never block the writer and one writer runs beside them;
``synchronous=NORMAL``: in WAL mode a commit is then durable against a crash of the process
(the OS has the WAL pages) but the last commits may be lost if the *machine* loses power
before the next checkpoint -- never corruption. ``FULL`` fsyncs the WAL on every commit,
which costs one disk flush per enqueue/finish (about 10x fewer jobs per second on ordinary
disks). A task queue that already runs jobs at least once accepts that trade; a deployment
that cannot should use Redis with AOF ``always``. ``busy_timeout`` makes a writer wait for
another process's write transaction instead of failing at once. ``journal_size_limit``
(``WAL_LIMIT``): the -wal grows past SQLite's checkpoint size (~4 MB) while readers keep a
checkpoint from finishing (busy workers, a backup), and without a limit it keeps that size
for as long as any process has the file open (60-150 MB beside a 10 MB database); with one,
the first write after a complete checkpoint cuts it back to ``WAL_LIMIT``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

from ..._backoff import RANDOM
from ..._errors import BrokerError, ConfigurationError
from . import _schema
from ._file import FileWatch, not_found, prepare

# A writer waiting for another process's write transaction tries again after a random pause
# that doubles from the first value up to the last (see Database._begin).
_POLL_FIRST, _POLL_MAX = 0.001, 0.01
WAL_LIMIT = 64 * 1024 * 1024  # bytes of -wal kept after a checkpoint (journal_size_limit)


def broker_error(exc: sqlite3.Error, path: str, busy_timeout: float) -> BrokerError:
    """Say what happened and what to do; sqlite3 errors never leave the adapter."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return BrokerError(
            f"the SQLite database {path} stayed locked for more than {busy_timeout:g} s: "
            "another connection (a long write transaction, a sqlite3 shell or a backup) "
            "holds it; close any tool holding it, or, with many busy writers, use redis:// "
            "instead"
        )
    if "disk is full" in text:
        return BrokerError(
            f"the filesystem holding {path} (and its -wal) is full: free space; queued jobs "
            "are kept and workers resume by themselves once there is room"
        )
    if "readonly" in text:
        return BrokerError(
            f"cannot write the SQLite database {path}: make the file, its -wal and -shm files "
            "(SQLite makes them with the file's mode) and its directory writable by this user"
        )
    if "unable to open" in text:
        return BrokerError(
            f"cannot open the SQLite database {path}: check that this user may read and "
            "write it and its folder"
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

    The file is made before SQLite opens it, private to this user (``_file``), and
    every connection opens it with ``mode=rw``, which never creates one: ``create=False``
    opens an existing database only, and a connection opened after the file was deleted
    fails instead of starting an empty one. Every ``read`` and ``write`` lets ``FileWatch``
    check, at most once a second, that the path still names the file this process has open;
    once it does not, ``_file_gone`` makes sure the old file's leftovers cannot harm whatever
    database is at the path now (``_file``, "When the file is gone").
    """

    def __init__(
        self, path: str, busy_timeout: float = 5.0, *, create: bool = True, given: str = ""
    ) -> None:
        _schema.check_sqlite_version()
        self.path = path
        self.busy_timeout = busy_timeout
        self._create = create
        self._given = given or path
        self._uri = f"file:{quote(path)}?mode=rw"
        self._mutex = threading.Lock()
        self._procs = _ProcessConnections(os.getpid())
        # Connections inherited over fork are kept referenced and never closed: closing
        # them in the child could checkpoint or unlock the parent's WAL.
        self._inherited: list[sqlite3.Connection] = []
        prepare(path, create=create, given=self._given)
        self._watch = FileWatch(path, gone=self._file_gone)
        with self._translate():
            conn = self._connect()
            try:
                self._prepare(conn)
            except BaseException:
                self.close()
                raise
        self._watch.opened()

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL takes an exclusive lock, and SQLite reports a clash
        # with another process doing the same at once as "locked" without calling the busy
        # handler: retry that step ourselves, within the same busy_timeout. A file already
        # in WAL mode is only asked (a read), so opening it never needs the write lock.
        if not self._create and _schema.schema_version(conn) == 0:  # read first: change nothing
            raise ConfigurationError(
                not_found(self.path, self._given, "no Conveyor tables in the SQLite file")
            )
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
                time.sleep(0.005 + RANDOM.random() * 0.02)
        if str(mode).lower() != "wal":
            raise ConfigurationError(
                f"{self.path} cannot use SQLite's WAL mode (journal mode stays {mode!r}): "
                "put the database on a local disk, not a network share"
            )
        old = _schema.migrate(conn, self.path, self._begin)
        self.migrated = (old, _schema.SCHEMA_VERSION)  # the versions before and after opening

    def _connect(self) -> sqlite3.Connection:
        self._watch.check(now=True)  # a new connection would open whatever the path names
        conn = sqlite3.connect(
            self._uri,
            uri=True,
            timeout=self.busy_timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # only so close() may run on another thread
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
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
            if "readonly" in str(exc):
                # SQLite opened a file it could not write read-only, and the connection
                # stays so: the next call opens the file again, writable once it is.
                self._forget_connection()
            raise broker_error(exc, self.path, self.busy_timeout) from exc

    def _forget_connection(self) -> None:
        """Close this thread's connection; its next call opens another."""
        procs = self._current()
        conn: sqlite3.Connection | None = getattr(procs.local, "conn", None)
        if conn is None:
            return
        procs.local.conn = None
        with self._mutex:
            if procs.opened.get(threading.current_thread()) is conn:
                del procs.opened[threading.current_thread()]
        with contextlib.suppress(sqlite3.Error):
            conn.close()

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
            time.sleep(RANDOM.uniform(pause / 2, pause))
            pause = min(pause * 2, _POLL_MAX)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads; each statement sees the latest commit."""
        self._watch.check()
        with self._translate():
            conn = self._conn()
            self._busy_handler(conn, True)
            yield conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): all of the block or none of it."""
        self._watch.check()
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

    def _file_gone(self) -> None:
        """Copy the old WAL into the old file, and take its -wal and -shm off the path
        (``_file``, "When the file is gone"). Called once by ``FileWatch``."""
        conn: sqlite3.Connection | None = getattr(self._current().local, "conn", None)
        if conn is not None and not conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # waits for nobody
        self._watch.remove_companions()

    def close(self) -> None:
        self._watch.last_look()
        procs = self._current()
        with self._mutex:
            conns, procs.opened = procs.opened, {}
        for conn in conns.values():
            conn.close()
        procs.local = threading.local()
        self._watch.forget_companions()
