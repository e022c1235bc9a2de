"""What every part of the SQLite broker shares: the file, the notifier, the clock, the
steps several operations take inside their transaction (dependents, events), and the sweep
of expired rows, in transactions of its own."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self, TypeVar

from ..._clock import Clock
from ..._errors import BrokerError
from ..._message import JobStatus
from .._base import EVENTS_KEPT, BrokerOptions, Watch, unknown_dependency
from .._eventlog import records
from .._port import Broker
from ._database import Database
from ._notify import Notifier, job_waiters
from ._sql import (
    CHUNK,
    COUNT_DOWN,
    LIVE,
    SWEEP,
    SWEEP_ROWS,
    TAKE_DEPENDENTS,
    TRIM_EVENTS,
    TRIM_ROWS,
    placeholders,
    take_seq,
)
from ._url import sqlite_path, sqlite_url
from .store import SQLiteKV

_SAFETY_NET = 0.5  # longest sleep without looking at the table
_SWEEP_EVERY = 30.0  # clock seconds between lazy deletions of expired rows
# A sweep deletes at most this many batches of SWEEP_ROWS, each its own write transaction
# with a pause between them in which another process's writer gets its turn; what is left
# waits for the next sweep, _SWEEP_AGAIN clock seconds later.
_SWEEP_BATCHES = 10
_SWEEP_AGAIN = 1.0
_SWEEP_PAUSE = 0.01  # seconds: a waiting writer tries again at least this often (_database)
_EVENT_POLL = 0.05  # how often a blocked event reader looks at the table
T = TypeVar("T")


class Listening(Watch[T]):
    """A ``Watch`` on the notify sockets (see the package docstring). ``look`` is a plain
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
        self._look = look
        self._again = again or look
        self._stack = contextlib.ExitStack()
        self._listener: Any = None

    def look(self) -> T:
        return self._look()

    def sleep_then_look(self, seconds: float) -> T:
        if self._listener is None:
            self._listener = self._stack.enter_context(self._notify.listen(self._channel))
        else:
            self._listener.wait(min(seconds, _SAFETY_NET))
        return self._again()

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


class Polling(Watch[T]):
    """A ``Watch`` that looks every ``_EVENT_POLL`` s (event readers: a writer does nothing
    for them, however many)."""

    def __init__(self, look: Callable[[], T]) -> None:
        self._look = look

    def look(self) -> T:
        return self._look()

    def sleep_then_look(self, seconds: float) -> T:
        time.sleep(min(seconds, _EVENT_POLL))
        return self.look()


class SQLiteCore(Broker):
    """The broker on the SQLite file at ``path``, made (with its missing folders) unless
    ``create`` is False: then a missing file raises ``ConfigurationError`` naming the path,
    and nothing is created (tools that only read). The files' modes, and how a file deleted
    or replaced under the process is noticed (``BrokerGone``): ``_file``."""

    def __init__(
        self,
        path: str,
        clock: Clock | None = None,
        *,
        busy_timeout: float = 5.0,
        create: bool = True,
        events_kept: int = EVENTS_KEPT,
    ):
        super().__init__(sqlite_url(path), clock=clock, events_kept=events_kept)
        self.path = os.path.abspath(path)  # threads open connections later, maybe elsewhere
        self._db = Database(self.path, busy_timeout, create=create, given=path)
        try:
            self._notify = Notifier(self.path, create=create)
        except BrokerError:
            self._db.close()
            raise
        self._kv = SQLiteKV(self._db, self._clock)
        self._next_sweep = 0.0

    @property
    def migrated(self) -> tuple[int, int]:
        """The file's schema versions before and after this broker opened it."""
        return self._db.migrated

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

    # -- steps inside a transaction ----------------------------------------------------------

    @staticmethod
    def _wait_for_dependencies(
        conn: sqlite3.Connection, job_id: str, deps: Sequence[str], now: float, *, known: bool
    ) -> int:
        """Register the job as a dependent of each dependency not ended yet; how many. An
        unknown one raises with ``known`` (enqueue), else it is not waited for (requeue)."""
        waiting = 0
        for dep in deps:
            row = conn.execute(
                f"SELECT status FROM jobs WHERE id = ? AND {LIVE}", (dep, now)
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
        for start in range(0, len(job_ids), CHUNK):
            chunk = job_ids[start : start + CHUNK]
            sql = TAKE_DEPENDENTS.format(marks=placeholders(len(chunk)))
            children += conn.execute(sql, chunk).fetchall()
        due = 0
        base = take_seq(conn, len(children)) if children else 0
        for i, (child,) in enumerate(children, 1):
            row = conn.execute(COUNT_DOWN, (base + i, child)).fetchone()
            due += row is not None and row[0] == 0
        return due

    def _forget_dependencies(self, conn: sqlite3.Connection, job_ids: Sequence[str]) -> None:
        """These jobs left before their dependencies ended (purged, cancelled): the
        dependencies forget them, so an id enqueued again is counted once, in time."""
        for start in range(0, len(job_ids), CHUNK):
            chunk = job_ids[start : start + CHUNK]
            conn.execute(
                f"DELETE FROM dependents WHERE child IN ({placeholders(len(chunk))})", chunk
            )

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
        # Bounded (TRIM_ROWS): what a lowered events_kept leaves goes over the next appends.
        conn.execute(TRIM_EVENTS, (last - self.events_kept, TRIM_ROWS))

    # -- the sweep -----------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Delete expired rows now and then (every read already treats them as absent), in
        batches of ``SWEEP_ROWS``, each its own write transaction and none inside another:
        a backlog (a million jobs whose records expired while no worker ran) holds the write
        lock for a batch at a time, and one sweep deletes at most ``_SWEEP_BATCHES``."""
        now = self._clock.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        budget = _SWEEP_BATCHES
        for table in ("jobs", "kv", "workers"):  # not locks: their rows carry the fences
            budget -= self._sweep_table(table, now, budget)
        if not budget:
            self._next_sweep = now + _SWEEP_AGAIN  # rows may be left
        self._notify.sweep()

    def _sweep_table(self, table: str, now: float, budget: int) -> int:
        """Delete ``table``'s rows expired at ``now``, up to ``budget`` batches; how many
        batches it took."""
        sql = SWEEP.format(table=table)
        for used in range(budget):
            if used:
                time.sleep(_SWEEP_PAUSE)  # after a full batch: another process's turn
            with self._db.write() as conn:
                if conn.execute(sql, (now, SWEEP_ROWS)).rowcount < SWEEP_ROWS:
                    return used + 1
        return budget

    def _wake_ended(self, job_ids: Iterable[str]) -> None:
        for job_id in dict.fromkeys(job_ids):
            self._notify.wake(job_waiters(job_id))

    def _close(self) -> None:
        self._db.close()
        self._notify.close()
