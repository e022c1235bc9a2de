"""The event log on PostgreSQL: the ``events`` table (see ``_schema``).

Events are inserted by the transaction of the change they describe and numbered by their
readers once committed (``{s}.read_events``), so a cursor is an event's number and none
slips in behind one a reader holds. A blocked reader sleeps until an ``e`` notification
(``_listen``), which every transaction that appends sends when it commits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .._port import check_read, event_number
from ._core import PostgresCore


class EventsMixin(PostgresCore):
    def publish(self, events: Sequence[bytes]) -> None:
        if events:
            with self._db.connection() as conn:
                self._append(conn, events)

    def read_events(self, after: str | None, block: float, limit: int) -> list[tuple[str, bytes]]:
        check_read(block, limit)
        start = event_number(after)
        deadline = time.monotonic() + block
        found = self._read(start, limit)
        if found or block <= 0:
            return found
        with self._listener.reading() as waiter:
            while True:
                found = self._read(start, limit)
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                waiter.wait(left)

    def _read(self, after: int, limit: int) -> list[tuple[str, bytes]]:
        sql = self._db.sql("SELECT number, body FROM {s}.read_events(%s, %s)")
        with self._db.connection() as conn:
            rows = conn.execute(sql, (after, limit)).fetchall()
        return [(str(n), bytes(body)) for n, body in rows]

    def events_tail(self) -> str:
        with self._db.connection() as conn:
            row = conn.execute(self._db.sql("SELECT {s}.events_tail()")).fetchone()
        return str(row[0] if row is not None else 0)
