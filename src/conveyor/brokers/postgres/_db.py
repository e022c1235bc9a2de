"""Connections to the PostgreSQL server, and the one place psycopg's errors are translated.

A ``psycopg_pool.ConnectionPool`` of autocommit connections: a statement is a transaction
of its own unless ``transaction()`` opens one, and every hot path is a single function call
(``_functions``). A forked child never touches its parent's pool: the first use in a new
process opens a pool of its own.

Errors: nothing from psycopg leaves this module's context managers. A refused login or
permission is ``BrokerAuthError`` (retrying cannot help); a server that cannot be reached,
or no free connection within ``pool_timeout``, ``BrokerUnavailable``; text the database's
encoding cannot hold ``InvalidName``; the rest ``BrokerError``. Messages never show the
password.

Encoding: the broker's own connections always speak UTF8 (``client_encoding``, whatever
the URL, the role or the database say), so text comes back as ``str`` on any server
encoding (psycopg hands out ``bytes`` where the client encoding is SQL_ASCII). A server in
another encoding (LATIN1, ...) converts on its side and refuses what it cannot hold: user
text (a unique key, a store key, a rate key) is checked against it before anything is sent
(``check_text``: with Python's codec where it holds exactly what the server holds, else by
asking the server, once per text); text the broker writes from what a task produced (a
failure reason, a progress note) is made storable instead (``storable``, and ``run_storing``
once more with the texts the server still refuses in ASCII), so no outcome is ever refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ..._errors import (
    BrokerAuthError,
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    InvalidName,
    InvalidURL,
)
from ._encoding import ascii_safe, codec_of, encoding_advice, python_codec, refusal, unstorable
from ._schema import SCHEMA_VERSION, instance, migrate, schema_version, sql
from ._url import WORKER_COMMITS, PostgresURL

try:
    import psycopg
    import psycopg_pool
    from psycopg import errors as pg_errors
    from psycopg.adapt import AdaptersMap, Dumper
    from psycopg.pq import Format
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ConfigurationError(
        "postgresql:// needs psycopg 3 and psycopg-pool: pip install 'conveyor[postgres]'"
    ) from exc

log = logging.getLogger("conveyor.postgres")
T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]
UniqueViolation = pg_errors.UniqueViolation

_KNOWN_MAX = 4096  # texts whose answer the server gave are kept (``Database._ask``) ...
_KNOWN_LENGTH = 512  # ... up to this length: keys, not failure reasons
_CONNECT_TIMEOUT = 10  # seconds, unless the URL says connect_timeout=
# SQLSTATE classes: 08 connection exception, 57P0x the server is shutting down or restarting.
_AWAY = ("08", "57P01", "57P02", "57P03")
_AUTH = ("28", "42501")  # invalid authorization, insufficient privilege
_REFUSED_LOGIN = ("authentication failed", "no pg_hba.conf entry", 'role "')


_LENGTH = struct.Struct("!i").pack
_NULL = _LENGTH(-1)
_HEAD = struct.Struct("!iii").pack  # dimensions, has nulls, element oid
_DIMENSION = struct.Struct("!ii").pack  # length, lower bound


class BytesArray(list[bytes | None]):
    """A ``bytea[]`` parameter in the binary format, dumped by ``_BytesArrayDumper``."""


class TextArray(list[str | None]):
    """A ``text[]`` parameter in the binary format, dumped by ``_TextArrayDumper``."""


def _array(oid: int, items: list[bytes | None]) -> bytes:
    """A one-dimension array in PostgreSQL's binary format. psycopg's own list dumper
    makes two Python calls and two appends per element (a finishing thread's largest
    share of its time per job): here the lengths and the elements are interleaved by
    slice assignment, element by element in C."""
    if not items:
        return _HEAD(0, 0, oid)
    parts: list[bytes | None] = [None] * (2 * len(items))
    if None in items:
        parts[0::2] = [_NULL if item is None else _LENGTH(len(item)) for item in items]
        parts[1::2] = [b"" if item is None else item for item in items]
        hasnull = 1
    else:
        parts[0::2] = map(_LENGTH, map(len, items))  # type: ignore[arg-type]
        parts[1::2] = items
        hasnull = 0
    parts[0:0] = _HEAD(1, hasnull, oid), _DIMENSION(len(items), 1)
    return b"".join(parts)  # type: ignore[arg-type]


class _BytesArrayDumper(Dumper):
    format = Format.BINARY
    oid = psycopg.postgres.types["bytea"].array_oid
    _element = psycopg.postgres.types["bytea"].oid

    def dump(self, obj: list[bytes | None]) -> bytes:
        return _array(self._element, obj)


class _TextArrayDumper(Dumper):
    format = Format.BINARY
    oid = psycopg.postgres.types["text"].array_oid
    _element = psycopg.postgres.types["text"].oid

    def __init__(self, cls: type, context: psycopg.abc.AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        # the connection's client encoding, as psycopg's own text dumper takes it (UTF-8
        # where that is SQL_ASCII, which converts nothing: psycopg names it "ascii")
        encoding = self.connection.info.encoding if self.connection else "utf-8"
        self._encoding = "utf-8" if encoding == "ascii" else encoding

    def dump(self, obj: list[str | None]) -> bytes:
        if self._encoding == "utf-8" and None not in obj:  # the usual case, element by element in C
            return _array(self._element, list(map(str.encode, obj)))  # type: ignore[arg-type]
        encoding = self._encoding
        return _array(self._element, [None if s is None else s.encode(encoding) for s in obj])


_HIDDEN = "***"


def _adapters() -> AdaptersMap:
    """psycopg's adapters, and the dumpers of ``BytesArray`` and ``TextArray``."""
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_dumper(BytesArray, _BytesArrayDumper)
    adapters.register_dumper(TextArray, _TextArrayDumper)
    return adapters


def libpq_text(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """What a psycopg error says, on one line, with each of ``secrets`` (the password's
    texts, ``PostgresURL.secrets``) masked where it stands as a whole token: libpq quotes
    the password in some messages. Not inside a longer name or number (a password "shop"
    in a database "shop_orders", "1" in "127.0.0.1"): that garbled the message, and where
    the mask fell told the password."""
    text = _masked(str(exc), secrets)
    text = " ".join(text.split())  # (the secrets hold their folded forms too)
    return _masked(text, secrets) or type(exc).__name__


def _masked(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:  # longest first: a shorter form may be part of a longer one
        whole = rf"(?<![\w.%-]){re.escape(secret)}(?![\w.%-])"
        text = re.sub(whole, _HIDDEN, text)
    return text


def translate(exc: BaseException, shown: str, secrets: Sequence[str] = ()) -> ConveyorError:
    """A psycopg (or pool) error as the Conveyor error that says what to do; ``secrets``:
    texts never shown (the password)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return BrokerUnavailable(
            f"no free connection to {shown} within the pool timeout: every connection of "
            "the pool is busy, or the server does not answer. Raise ?max_connections= or "
            "?pool_timeout=, or check the server"
        )
    state = getattr(exc, "sqlstate", None) or ""
    text = libpq_text(exc, secrets)
    if not state and any(sign in text for sign in _REFUSED_LOGIN):
        state = "28000"  # a refused login reaches psycopg without its SQLSTATE
    if not state and "does not exist" in text and "database" in text:
        return BrokerError(
            f"PostgreSQL at {shown}: {text}. Create the database (createdb), or name "
            "another in the URL"
        )
    if state.startswith(_AUTH):
        return BrokerAuthError(
            f"PostgreSQL at {shown} refused: {text}. Check the user, password and grants "
            "(the user needs CREATE on the database for the first migration, and the "
            "right to use the schema)"
        )
    if state.startswith(_AWAY) or (isinstance(exc, psycopg.OperationalError) and not state):
        return BrokerUnavailable(f"cannot reach PostgreSQL at {shown}: {text}")
    if isinstance(exc, pg_errors.UntranslatableCharacter):  # user text (the rest is checked)
        return InvalidName(
            f"PostgreSQL at {shown} cannot store this text: {text}. Use characters the "
            "database's encoding holds (ASCII always works), or keep Conveyor's tables in a "
            "database created with ENCODING 'UTF8'; nothing was written"
        )
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedFunction):
        return BrokerError(
            f"PostgreSQL at {shown}: {text}. The Conveyor schema is missing or older than "
            "this Conveyor: run `conveyor migrate`"
        )
    return BrokerError(f"PostgreSQL error at {shown}: {text}")


class Database:
    """The pool of one broker, on one schema. ``create``: apply pending migrations on open
    (else a schema without Conveyor's tables is a ``ConfigurationError``)."""

    def __init__(self, url: PostgresURL, *, create: bool = True) -> None:
        self.url = url
        self.schema = url.schema
        self.shown = url.shown
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._adapters = _adapters()
        with self.translated():
            first = psycopg.connect(self.conninfo(), autocommit=True)
            try:
                self.database = first.info.dbname
                self.encoding = first.info.parameter_status("server_encoding") or "UTF8"
                self.codec = codec_of(self.encoding)  # exact, or None
                self._guess = self.codec or python_codec(self.encoding)  # for ``storable``
                self._known: dict[str, bool] = {}  # text -> the server holds it (``_ask``)
                self._check_worker_commit(first)
                self.migrated = self._prepare(first, create)
                self.instance, self.server_database = instance(first, self.schema)
            finally:
                first.close()
        self._pool = self._open_pool()

    def conninfo(self) -> str:
        """The libpq conninfo (it holds the password: never shown)."""
        try:
            params = psycopg.conninfo.conninfo_to_dict(self.url.conninfo)
        except psycopg.ProgrammingError as exc:
            # libpq quotes the token it could not read, which may be the password
            said = libpq_text(exc, self.url.secrets)
            raise InvalidURL(
                f"bad PostgreSQL URL {self.shown!r}: {said}; check its percent-escapes (%XX, "
                "never %00) and percent-encode spaces as %20; Conveyor takes schema, "
                "max_connections, pool_timeout and worker_commit, libpq its own connection "
                "parameters"
            ) from None
        params.setdefault("connect_timeout", _CONNECT_TIMEOUT)
        params.setdefault("application_name", "conveyor")
        params["client_encoding"] = "UTF8"  # text as str on every server encoding (see above)
        if self.url.worker_commit == "sync":  # read by the claim and finish functions
            params["options"] = f"{params.get('options') or ''} -c conveyor.worker_commit=sync"
        return psycopg.conninfo.make_conninfo("", **params)

    def connect(self) -> Connection:
        """A connection of its own, outside the pool, in autocommit mode (the listener's)."""
        return psycopg.connect(self.conninfo(), autocommit=True)

    def _check_worker_commit(self, conn: Connection) -> None:
        """``conveyor.worker_commit`` as the connections get it (the URL's option, or a
        database's, a role's or ``options``' setting): async, sync or unset."""
        row = conn.execute("SELECT current_setting('conveyor.worker_commit', true)").fetchone()
        value = row[0] if row is not None else None
        if value not in (None, "", *WORKER_COMMITS):
            raise ConfigurationError(
                f"conveyor.worker_commit is {str(value)[:40]!r} on the connections to "
                f"{self.shown}: it takes async or sync. It was set by ALTER DATABASE or "
                "ALTER ROLE ... SET, or by -c in the URL's options: correct it there, or "
                "RESET it and give ?worker_commit= in the URL"
            )

    def _prepare(self, conn: Connection, create: bool) -> tuple[int, int]:
        if create:
            return migrate(conn, self.schema)
        version = schema_version(conn, self.schema)
        if version == 0:
            raise ConfigurationError(
                f"no Conveyor tables in schema {self.schema!r} of database "
                f"{self.database!r} ({self.shown}); nothing was created. Run `conveyor "
                "migrate` (or start a worker), or point at the schema your workers use "
                "with ?schema="
            )
        if version < SCHEMA_VERSION:
            raise ConfigurationError(
                f"schema {self.schema!r} of database {self.database!r} has Conveyor schema "
                f"version {version}, older than this Conveyor's {SCHEMA_VERSION}: run "
                "`conveyor migrate` (workers also migrate when they start)"
            )
        return version, version

    def _open_pool(self) -> psycopg_pool.ConnectionPool[Connection]:
        return psycopg_pool.ConnectionPool(
            self.conninfo(),
            min_size=1,
            max_size=self.url.max_connections,
            kwargs={"autocommit": True, "context": self._adapters},
            timeout=self.url.pool_timeout,
            name=f"conveyor-{self.schema}",
            open=True,
        )

    def _current(self) -> psycopg_pool.ConnectionPool[Connection]:
        if self._pid != os.getpid():  # a forked child: a pool of its own, the parent's untouched
            with self._lock:
                if self._pid != os.getpid():
                    self._pool = self._open_pool()
                    self._pid = os.getpid()
        return self._pool

    def sql(self, text: str) -> str:
        return sql(text, self.schema)

    def storable(self, text: str) -> str:
        """Text the broker writes from what a task produced (a failure reason, a progress
        note), with what the database cannot store replaced by ``?``. Where Python's codec
        is not exact (``codec_of``) it is the best guess: ``run_storing`` makes it ASCII if
        the server still refuses it."""
        if text.isascii() and "\x00" not in text:
            return text
        codec = self._guess or "ascii"  # a codec Python lacks: ASCII is in every encoding
        return text.encode(codec, "replace").decode(codec).replace("\x00", "?")

    def run_storing(self, fn: Callable[[Connection, Callable[[str], str]], T]) -> T:
        """``run(fn)``, where ``fn(conn, storable)`` passes the text a task produced through
        ``storable`` before it writes; if the server refuses a character of it all the same
        (an encoding Python's codec maps otherwise), once more with the server asked about
        each distinct non-ASCII text on that connection, and only the ones it refuses made
        ASCII: the write is never refused for its text, and the rest keep theirs."""
        try:
            return self.run(lambda conn: fn(conn, self.storable))
        except InvalidName as exc:
            if not isinstance(exc.__cause__, pg_errors.UntranslatableCharacter):
                raise
            log.info("PostgreSQL refused text a task produced (%s); writing it as ASCII", exc)
        return self.run(lambda conn: fn(conn, self._server_storable(conn)))

    def _server_storable(self, conn: Connection) -> Callable[[str], str]:
        """``storable``, with what the server refuses all the same made ASCII (asked on
        ``conn``, in autocommit, once per distinct text)."""
        answers: dict[str, str] = {}

        def storable(text: str) -> str:
            guess = self.storable(text)
            if guess.isascii():
                return guess
            if guess not in answers:
                answers[guess] = guess if self._ask(conn, guess) else ascii_safe(text)
            return answers[guess]

        return storable

    def check_text(self, text: str, what: str) -> str:
        """User text (``what``: "unique key", "store key", "rate key") the database can
        store, else ``InvalidName`` before anything is written. Where no Python codec is
        exact the server is asked, on a connection of the broker's own (a caller's
        transaction is never touched), once per text (``_known``)."""
        if unstorable(text, self.codec) or (
            self.codec is None and not text.isascii() and not self._holds(text)
        ):
            where = f"the PostgreSQL database {self.database!r}"
            raise refusal(what, text, where, encoding_advice(self.encoding))
        return text

    def asks(self, text: str) -> bool:
        """Whether ``check_text(text)`` would ask the server (a blocking round trip)."""
        return self.codec is None and not text.isascii() and text not in self._known

    def learn(self, texts: Iterable[str]) -> None:
        """Ask the server, on one connection, about each of ``texts`` not known yet, so
        ``check_text`` answers from memory: for an event loop to run in a thread first."""
        unknown = [t for t in dict.fromkeys(texts) if self.asks(t) and "\x00" not in t]
        if unknown:
            with self.connection() as conn:
                for text in unknown:
                    self._ask(conn, text)

    async def learn_async(self, texts: Iterable[str]) -> None:
        """``learn`` off the event loop, if there is anything to ask."""
        given = list(texts)
        if any(map(self.asks, given)):
            await asyncio.to_thread(self.learn, given)

    def _holds(self, text: str) -> bool:
        """Whether the server converts ``text`` into its encoding (one round trip, the
        first time)."""
        held = self._known.get(text)
        if held is None:
            with self.connection() as conn:
                held = self._ask(conn, text)
        return held

    def _ask(self, conn: Connection, text: str) -> bool:
        """Whether the server converts ``text`` into its encoding: as known, else asked on
        ``conn`` (in autocommit); a short text's answer is kept: what it holds today it
        holds tomorrow."""
        held = self._known.get(text)
        if held is not None:
            return held
        try:
            conn.execute("SELECT %s::text", (text,))
        except (pg_errors.UntranslatableCharacter, UnicodeEncodeError):  # (a lone surrogate)
            held = False
        else:
            held = True
        if len(text) <= _KNOWN_LENGTH:  # keys; not a long failure reason
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            self._known[text] = held
        return held

    @contextmanager
    def translated(self) -> Iterator[None]:
        try:
            yield
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise translate(exc, self.shown, self.url.secrets) from exc

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection in autocommit mode (each statement commits by itself)."""
        with self.translated(), self._current().connection() as conn:
            yield conn

    def run(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` on a pooled connection, and once more on another if the first turned out
        broken (the server restarted since it was pooled): for calls that are safe to
        repeat (enqueue is idempotent on job ids; fetch, finish, renew, release and progress
        are fenced; heartbeats and the store's set are upserts; reads; cancel, promote and
        the admin calls find their own work done). Not for a call whose repeat, after a
        first try that committed unseen, would write twice or answer wrongly (``store``'s
        ``_ONCE``, ``publish``): those use ``connection``. A transaction ``fn`` opens on the broken
        connection never committed.
        The pool's other idle connections are checked then, so a restart costs each
        process one failed try, not one per pooled connection."""
        conn: Connection | None = None
        try:
            with self._current().connection() as conn:
                return fn(conn)
        except psycopg.OperationalError as exc:
            if conn is None or not conn.broken:
                raise translate(exc, self.shown, self.url.secrets) from exc
            text = libpq_text(exc, self.url.secrets)
            log.info("a pooled connection was broken (%s); trying another", text)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise translate(exc, self.shown, self.url.secrets) from exc
        with self.translated():
            self._current().check()
            with self._current().connection() as conn:
                return fn(conn)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A pooled connection inside one transaction: all of the block or none of it."""
        with self.translated(), self._current().connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        if self._pid == os.getpid():
            self._pool.close()
