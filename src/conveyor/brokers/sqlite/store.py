"""The key-value store on the SQLite broker's file (table ``kv``, documented with the whole
schema in ``_schema``).

Every operation is one statement or one write transaction, so it is atomic across threads
and processes. ``update`` is optimistic, as the port asks: the user's function runs outside
any transaction (it may be slow, and must not hold the database's single write lock), then a
compare-and-set on the row's ``version`` writes only if nobody wrote in between. An
expired key reads as absent until it is overwritten or the broker's sweep deletes it
(``_core``); lock rows are never swept: they carry the fencing counters.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Protocol

from ..._clock import Clock, SystemClock
from ...stores._port import KeyValue, Updater, Versioned, check_key, parse_counter, versioned_update

_READ = "SELECT value, expires_at, version FROM kv WHERE key = ?"
_WRITE = (
    "INSERT INTO kv(key, value, expires_at, version) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
    "expires_at = excluded.expires_at, version = excluded.version"
)
_NEXT_VERSION = "UPDATE meta SET value = value + 1 WHERE name = 'kv_version' RETURNING value"
# One statement: take a free (never taken, released or expired) lock and count the grant.
_LOCK_ACQUIRE = """
INSERT INTO locks(name, token, expires_at, fence) VALUES (?, ?, ?, 1)
ON CONFLICT(name) DO UPDATE SET
    token = excluded.token, expires_at = excluded.expires_at, fence = fence + 1
WHERE locks.token IS NULL OR locks.expires_at <= ?
RETURNING fence
"""
_HELD = "name = ? AND token = ? AND expires_at > ?"

# A row: (value, expires_at, version), or None when there is no row.
_Row = tuple[bytes, float | None, int]


class SQLiteAccess(Protocol):
    """What the store needs from the broker's ``Database``: reads, and write transactions."""

    def read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def write(self) -> AbstractContextManager[sqlite3.Connection]: ...


class SQLiteKV(KeyValue):
    def __init__(self, db: SQLiteAccess, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()

    # -- helpers (take an open connection) ---------------------------------------------------

    def _row(self, conn: sqlite3.Connection, key: str) -> _Row | None:
        """The live row; an expired one reads as absent (it is overwritten or swept later)."""
        row: _Row | None = conn.execute(_READ, (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= self._clock.time()):
            return None
        return row

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._clock.time() + ttl

    def _put(
        self, conn: sqlite3.Connection, key: str, value: bytes, expires_at: float | None
    ) -> None:
        version = conn.execute(_NEXT_VERSION).fetchone()[0]
        conn.execute(_WRITE, (key, value, expires_at, version))

    def _incr(self, conn: sqlite3.Connection, key: str, amount: int, ttl: float | None) -> int:
        row = self._row(conn, key)
        value = parse_counter(key, bytes(row[0]) if row is not None else None) + amount
        # ttl applies when the counter is created; an existing counter keeps its expiry.
        expires = row[1] if row is not None else self._expiry(ttl)
        self._put(conn, key, str(value).encode(), expires)
        return value

    # -- the port ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        check_key(key)
        with self._db.read() as conn:
            row = self._row(conn, key)
        return None if row is None else bytes(row[0])

    def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        check_key(key)
        with self._db.write() as conn:
            if nx and self._row(conn, key) is not None:
                return False
            self._put(conn, key, value, self._expiry(ttl))
            return True

    def delete(self, key: str) -> bool:
        check_key(key)
        with self._db.write() as conn:
            existed = self._row(conn, key) is not None
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            return existed

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        check_key(key)
        with self._db.write() as conn:
            return self._incr(conn, key, amount, ttl)

    def ttl(self, key: str) -> float | None:
        check_key(key)
        with self._db.read() as conn:
            row = self._row(conn, key)
        if row is None or row[1] is None:
            return None
        return float(row[1]) - self._clock.time()

    def update(
        self, key: str, fn: Updater, ttl: float | None = None, retries: int = 50
    ) -> bytes | None:
        return versioned_update(
            check_key(key), fn, retries, lambda: self._read(key),
            lambda seen, new: self._compare_and_set(key, seen, new, ttl),
        )  # fmt: skip

    def _read(self, key: str) -> Versioned:
        with self._db.read() as conn:
            row = conn.execute(_READ, (key,)).fetchone()
        if row is None:
            return None, None
        live = row[1] is None or row[1] > self._clock.time()
        return (bytes(row[0]) if live else None), int(row[2])

    def _compare_and_set(
        self, key: str, seen: int | None, new: bytes | None, ttl: float | None
    ) -> bool:
        """Write ``new`` only if the row's version is still ``seen`` (None: no row)."""
        with self._db.write() as conn:
            row = conn.execute("SELECT version FROM kv WHERE key = ?", (key,)).fetchone()
            if (None if row is None else int(row[0])) != seen:
                return False
            if new is None:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                self._put(conn, key, new, self._expiry(ttl))
            return True

    def lock_acquire(self, name: str, token: str, ttl: float) -> int | None:
        check_key(name)
        now = self._clock.time()
        with self._db.write() as conn:
            row = conn.execute(_LOCK_ACQUIRE, (name, token, now + ttl, now)).fetchone()
        return None if row is None else int(row[0])

    def lock_release(self, name: str, token: str) -> bool:
        check_key(name)
        now = self._clock.time()
        with self._db.write() as conn:
            sql = f"UPDATE locks SET token = NULL, expires_at = NULL WHERE {_HELD}"
            return conn.execute(sql, (name, token, now)).rowcount == 1

    def lock_extend(self, name: str, token: str, ttl: float) -> bool:
        check_key(name)
        now = self._clock.time()
        with self._db.write() as conn:
            sql = f"UPDATE locks SET expires_at = ? WHERE {_HELD}"
            return conn.execute(sql, (now + ttl, name, token, now)).rowcount == 1
