"""The key-value store on the PostgreSQL broker's database (tables ``kv`` and ``locks``,
documented with the whole schema in ``_schema``).

Every operation is one statement (``incr``: one function call), so it is atomic across
threads, processes and machines. ``update`` is optimistic, as the port asks: the user's
function runs outside any transaction (it may be slow, and must hold no row lock), then a
compare-and-set on the row's ``version`` writes only if nobody wrote in between.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from ..._clock import Clock, SystemClock
from ...stores._port import KeyValue, Updater, Versioned, check_key, parse_counter, versioned_update

T = TypeVar("T")
_LIVE = "(expires_at IS NULL OR expires_at > {s}.clock(%(now)s))"
_UPSERT = """
INSERT INTO {s}.kv(key, value, expires_at, version)
VALUES (%(key)s, %(value)s, {s}.clock(%(now)s) + %(ttl)s, nextval('{s}.kv_version'))
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,
    version = excluded.version
"""
_SQL = {
    "get": f"SELECT value FROM {{s}}.kv WHERE key = %(key)s AND {_LIVE}",
    "set": _UPSERT + "RETURNING 1",
    # nx: only over a value that expired (an absent one is inserted)
    "set_nx": _UPSERT + "WHERE {s}.kv.expires_at <= {s}.clock(%(now)s) RETURNING 1",
    "delete": f"DELETE FROM {{s}}.kv WHERE key = %(key)s RETURNING {_LIVE}",
    "incr": "SELECT {s}.kv_incr(%(key)s, %(amount)s, %(ttl)s, %(now)s)",
    "raw": "SELECT value FROM {s}.kv WHERE key = %(key)s",
    "ttl": f"""SELECT expires_at - {{s}}.clock(%(now)s) FROM {{s}}.kv
        WHERE key = %(key)s AND {_LIVE}""",
    "read": """SELECT value, expires_at, version, {s}.clock(%(now)s) FROM {s}.kv
        WHERE key = %(key)s""",
    "create": """INSERT INTO {s}.kv(key, value, expires_at, version)
        VALUES (%(key)s, %(value)s, {s}.clock(%(now)s) + %(ttl)s, nextval('{s}.kv_version'))
        ON CONFLICT (key) DO NOTHING RETURNING 1""",
    "absent": "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM {s}.kv WHERE key = %(key)s)",
    "swap": """UPDATE {s}.kv SET value = %(value)s, expires_at = {s}.clock(%(now)s) + %(ttl)s,
        version = nextval('{s}.kv_version') WHERE key = %(key)s AND version = %(seen)s
        RETURNING 1""",
    "remove": "DELETE FROM {s}.kv WHERE key = %(key)s AND version = %(seen)s RETURNING 1",
    # Take a free (never taken, released or expired) lock and count the grant.
    "lock_acquire": """
        INSERT INTO {s}.locks(name, token, expires_at, fence)
        VALUES (%(key)s, %(token)s, {s}.clock(%(now)s) + %(ttl)s, 1)
        ON CONFLICT (name) DO UPDATE SET token = excluded.token,
            expires_at = excluded.expires_at, fence = {s}.locks.fence + 1
        WHERE {s}.locks.token IS NULL OR {s}.locks.expires_at <= {s}.clock(%(now)s)
        RETURNING fence""",
    # A repeat (``_run``'s ``again``) after the connection broke: the first try's grant
    # may have committed unseen, so the lock held by this very token is the grant.
    "lock_acquire_again": """
        INSERT INTO {s}.locks(name, token, expires_at, fence)
        VALUES (%(key)s, %(token)s, {s}.clock(%(now)s) + %(ttl)s, 1)
        ON CONFLICT (name) DO UPDATE SET token = excluded.token,
            expires_at = excluded.expires_at,
            fence = {s}.locks.fence + CASE WHEN {s}.locks.token = excluded.token
                                           AND {s}.locks.expires_at > {s}.clock(%(now)s)
                                      THEN 0 ELSE 1 END
        WHERE {s}.locks.token IS NULL OR {s}.locks.expires_at <= {s}.clock(%(now)s)
            OR {s}.locks.token = excluded.token
        RETURNING fence""",
    "lock_release": """UPDATE {s}.locks SET token = NULL, expires_at = NULL
        WHERE name = %(key)s AND token = %(token)s AND expires_at > {s}.clock(%(now)s)""",
    "lock_extend": """UPDATE {s}.locks SET expires_at = {s}.clock(%(now)s) + %(ttl)s
        WHERE name = %(key)s AND token = %(token)s AND expires_at > {s}.clock(%(now)s)""",
}

# Sent once, never repeated on another connection when the first broke: if the server had
# committed the first try before the connection dropped, the repeat would count twice
# (incr), or answer False for a write that happened (set nx, delete, lock release, and the
# compare-and-set of ``update``, which would then call its function again on the value it
# wrote): the caller gets ``BrokerUnavailable`` instead (docs/postgres.md, "Operating
# it"). Every other statement reads, or its repeat finds its own write and answers as the
# first try would (set; lock_extend; lock_acquire, as ``lock_acquire_again``).
_ONCE = frozenset({"incr", "set_nx", "delete", "create", "swap", "remove", "lock_release"})


class PostgresAccess(Protocol):
    """What the store needs from the broker's ``Database``: pooled connections (autocommit,
    errors translated), once or tried again on another if broken, and its schema's SQL."""

    def connection(self) -> AbstractContextManager[Any]: ...

    def run(self, fn: Callable[[Any], T]) -> T: ...

    def sql(self, text: str) -> str: ...

    def check_text(self, text: str, what: str) -> str: ...

    async def learn_async(self, texts: Iterable[str]) -> None: ...


class PostgresKV(KeyValue):
    def __init__(self, db: PostgresAccess, clock: Clock | None = None) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self._injected = not isinstance(self._clock, SystemClock)
        self._sql = {name: db.sql(text) for name, text in _SQL.items()}

    def check_text(self, text: str, what: str) -> str:
        return self._db.check_text(text, what)

    async def check_texts_async(self, texts: Collection[str], what: str) -> None:
        await self._db.learn_async(texts)  # what the server must answer, in a thread
        for text in texts:
            self._db.check_text(text, what)

    def _key(self, key: str) -> str:
        """A good key the database can store (its encoding may not hold every character)."""
        return self._db.check_text(check_key(key), "store key")

    def _run(self, name: str, again: str | None = None, **args: Any) -> tuple[Any, ...] | None:
        """One statement; its first row (None: no row). Tried once more on another
        connection if the first broke (``Database.run``), as ``again`` if given: for the
        statements whose repeat answers as the first try would (``_ONCE``: the others)."""
        args["now"] = self._clock.time() if self._injected else None
        if name in _ONCE:
            with self._db.connection() as conn:
                return self._first_row(conn, name, args)
        tries = iter((name, again or name))
        return self._db.run(lambda conn: self._first_row(conn, next(tries), args))

    def _first_row(self, conn: Any, name: str, args: dict[str, Any]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = conn.execute(self._sql[name], args).fetchone()
        return row

    # -- the port ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        row = self._run("get", key=self._key(key))
        return None if row is None else bytes(row[0])

    def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        name = "set_nx" if nx else "set"
        return self._run(name, key=self._key(key), value=value, ttl=ttl) is not None

    def delete(self, key: str) -> bool:
        row = self._run("delete", key=self._key(key))
        return row is not None and bool(row[0])

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        self._key(key)
        while True:
            row = self._run("incr", key=key, amount=amount, ttl=ttl)
            if row is not None and row[0] is not None:
                return int(row[0])
            # Not a counter: say so as every adapter does (unless it became one meanwhile).
            raw = self._run("raw", key=key)
            parse_counter(key, None if raw is None else bytes(raw[0]))

    def ttl(self, key: str) -> float | None:
        row = self._run("ttl", key=self._key(key))
        return None if row is None or row[0] is None else float(row[0])

    def update(
        self, key: str, fn: Updater, ttl: float | None = None, retries: int = 50
    ) -> bytes | None:
        return versioned_update(
            self._key(key), fn, retries, lambda: self._read(key),
            lambda seen, new: self._compare_and_set(key, seen, new, ttl),
        )  # fmt: skip

    def _read(self, key: str) -> Versioned:
        row = self._run("read", key=key)
        if row is None:
            return None, None
        live = row[1] is None or row[1] > row[3]
        return (bytes(row[0]) if live else None), int(row[2])

    def _compare_and_set(
        self, key: str, seen: int | None, new: bytes | None, ttl: float | None
    ) -> bool:
        """Write ``new`` only if the row's version is still ``seen`` (None: no row)."""
        if seen is None:
            if new is None:
                return self._run("absent", key=key) is not None
            return self._run("create", key=key, value=new, ttl=ttl) is not None
        if new is None:
            return self._run("remove", key=key, seen=seen) is not None
        return self._run("swap", key=key, value=new, ttl=ttl, seen=seen) is not None

    def lock_acquire(self, name: str, token: str, ttl: float) -> int | None:
        key = self._key(name)
        row = self._run("lock_acquire", "lock_acquire_again", key=key, token=token, ttl=ttl)
        return None if row is None else int(row[0])

    def lock_release(self, name: str, token: str) -> bool:
        return self._rowcount("lock_release", key=self._key(name), token=token) == 1

    def lock_extend(self, name: str, token: str, ttl: float) -> bool:
        return self._rowcount("lock_extend", key=self._key(name), token=token, ttl=ttl) == 1

    def _rowcount(self, name: str, **args: Any) -> int:
        """How many rows one statement changed; tried as ``_run`` does."""
        args["now"] = self._clock.time() if self._injected else None
        if name in _ONCE:
            with self._db.connection() as conn:
                return int(conn.execute(self._sql[name], args).rowcount)
        return self._db.run(lambda conn: int(conn.execute(self._sql[name], args).rowcount))
