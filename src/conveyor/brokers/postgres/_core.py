"""What every part of the PostgreSQL broker shares: its database, clock and listener, and
the steps several operations take inside their transactions."""

from __future__ import annotations

from collections.abc import Sequence

from ..._clock import Clock
from ._db import Connection, Database
from ._listen import Listener

# A record that has not expired (its expiry is set once the job ended).
LIVE = "(expires_at IS NULL OR expires_at > {s}.clock(%(now)s))"


class PostgresCore:
    events_kept: int
    _db: Database
    _clock: Clock
    _injected: bool  # True: an injected clock (tests) passes its now to every statement
    _listener: Listener

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
