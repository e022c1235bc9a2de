"""What every part of the PostgreSQL broker shares: its database, clock and listener, the
watches that block on it, and the steps several operations take inside their transactions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import ClassVar, Self, TypeVar

from ..._clock import Clock
from .._base import EVENTS_KEPT, BrokerOptions, Watch
from .._port import Broker
from ._db import Connection, Database
from ._listen import Listener, Waiter
from ._transactional import Transactional
from ._url import channel, parse_postgres_url
from .store import PostgresKV

# A record that has not expired (its expiry is set once the job ended).
LIVE = "(expires_at IS NULL OR expires_at > {s}.clock(%(now)s))"
_SAFETY_NET = 5.0  # longest sleep without looking at the tables (a lost listener)
T = TypeVar("T")


class Listening(Watch[T]):
    """A ``Watch`` on the broker's listener (``_listen``): ``register`` puts a waiter on the
    notifications that concern the watch. It registers before the first look if the
    listener already listens (no extra look), else at the first sleep, which then looks
    again at once; either way a commit after the registration wakes the sleep after it.
    A sleep lasts at most ``_SAFETY_NET``."""

    def __init__(
        self,
        listener: Listener,
        register: Callable[[], contextlib.AbstractContextManager[Waiter]],
        look: Callable[[], T],
    ) -> None:
        self._listener, self._register, self._look = listener, register, look
        self._stack = contextlib.ExitStack()
        self._waiter: Waiter | None = None

    def __enter__(self) -> Self:
        if self._listener.up:  # listening already: registering costs nothing
            self._waiter = self._stack.enter_context(self._register())
        return self

    def look(self) -> T:
        return self._look()

    def sleep_then_look(self, seconds: float) -> T:
        if self._waiter is None:  # the listener starts now (a first fetch never waits for it)
            self._waiter = self._stack.enter_context(self._register())
        else:
            self._waiter.wait(min(seconds, _SAFETY_NET))
        return self._look()

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


class PostgresCore(Broker):
    """The broker on a PostgreSQL database (see ``PostgresBroker``)."""

    _statements: ClassVar[dict[str, str]] = {}  # by name, prepared for the schema in ``_sql``

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        create: bool = True,
        events_kept: int = EVENTS_KEPT,
    ) -> None:
        parsed = parse_postgres_url(url)
        super().__init__(parsed.shown, clock=clock, events_kept=events_kept)
        self.schema = parsed.schema
        self._injected = not self._real_time  # True: the clock's now goes to every statement
        self._db = Database(parsed, create=create)
        self._channel = channel(parsed.schema)
        self._listener = Listener(self._db.connect, self._channel)
        self._kv = PostgresKV(self._db, self._clock)
        self._transactional = Transactional(self)
        self._sql = {name: self._db.sql(text) for name, text in self._statements.items()}
        self._next_sweep = 0.0

    @classmethod
    def from_url(cls, url: str, options: BrokerOptions) -> Self:
        return cls(url, clock=options.clock, create=options.create, events_kept=options.events_kept)

    @property
    def kv(self) -> PostgresKV:
        return self._kv

    @property
    def instance(self) -> int:
        """The schema's ``instance`` number (``_schema``): how a caller's connection is
        recognised as one to this database and schema."""
        return self._db.instance

    @property
    def migrated(self) -> tuple[int, int]:
        """The schema versions before and after this broker opened it."""
        return self._db.migrated

    def _now(self) -> float | None:
        """The ``now`` statements take: the injected clock's, or None for the server's."""
        return self._clock.time() if self._injected else None

    def _notify(self, conn: Connection, kind: str, items: Sequence[str]) -> None:
        """Wake the listeners these items concern when ``conn``'s transaction commits."""
        if items:
            conn.execute(self._db.sql("SELECT {s}.notify(%s, %s::text[])"), (kind, list(items)))

    def _release_dependents(self, conn: Connection, job_ids: list[str]) -> list[str]:
        """These jobs just ended (same transaction): count their dependents down; the
        queues of those that are due now."""
        sql = self._db.sql("SELECT {s}.release_dependents(%s::text[])")
        row = conn.execute(sql, (job_ids,)).fetchone()
        return list(row[0]) if row is not None and row[0] else []

    def _ended_early(self, conn: Connection, job_ids: list[str], told: Sequence[str]) -> None:
        """These jobs left before they ran (cancelled, purged): their dependents are
        counted down as an ending would, their dependencies forget them (an id enqueued
        again is counted once, in time), and the waiters ``told`` names are woken."""
        due = self._release_dependents(conn, job_ids)
        conn.execute(
            self._db.sql("DELETE FROM {s}.dependents WHERE child = ANY(%s::text[])"), (job_ids,)
        )
        self._notify(conn, "q", sorted(set(due)))
        self._notify(conn, "d", told)

    def _append(self, conn: Connection, events: Sequence[bytes]) -> None:
        """Append events in ``conn``'s transaction (``{s}.append_events``)."""
        if events:
            sql = self._db.sql("SELECT {s}.append_events(%s::bytea[], %s::int)")
            conn.execute(sql, (list(events), self.events_kept))

    def _close(self) -> None:
        self._listener.close()
        self._db.close()

    def __repr__(self) -> str:
        return f"<PostgresBroker {self.url}>"
