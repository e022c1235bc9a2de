"""Enqueue inside the caller's own transaction (``task.options(connection=conn).delay()``).

The jobs are written through the caller's open connection by the same ``{s}.enqueue``
call the broker makes (one statement): they commit or roll back with the caller's own
writes, and workers are woken by the notification PostgreSQL delivers at that commit.
So "order saved but email job lost" and "job ran for an order that was rolled back"
cannot happen.

Connections taken: psycopg 3's ``Connection`` and ``AsyncConnection``; SQLAlchemy's
``Session`` and ``Connection`` on the ``postgresql+psycopg`` driver (and their asyncio
forms, from ``enqueue_async``/``delay_async``); Django's ``connection`` (psycopg 3). A
connection is checked once, the first time it is given: it must reach the database and
schema the broker uses (the schema's ``instance`` number in ``meta`` must match), else a
``ConfigurationError`` says which database it reached. Nothing is written then, and the
caller's transaction is left as it was.

An error on the caller's connection is told as one (``_failure``): a ``BrokerError`` that
names that connection's database, not the broker's URL, says what became of the caller's
transaction (aborted: roll it back, and run it again whole after a serialization failure
or a deadlock; lost with the connection: it did not commit), and has psycopg's error as
its ``__cause__``. The broker's own advice (send again with ``job_id=``, run ``conveyor
migrate``) is not given where it cannot help.

The caller's connection keeps its own ``client_encoding`` (nothing here changes it): a
unique key that it cannot send, or the database cannot store, is an ``InvalidName`` before
anything is sent, so the caller's transaction is left as it was then too.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.array import ListBinaryDumper, ListDumper

from ..._errors import BrokerError, ConfigurationError
from ..._message import Envelope
from ._db import libpq_text
from ._encoding import codec_of, refusal, unstorable
from ._enqueue import ENQUEUE, check_keys, enqueue_params, enqueued
from ._schema import sql
from ._url import quoted

if TYPE_CHECKING:
    from ._core import PostgresCore

Raw = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]

_KINDS = (
    "a psycopg 3 connection, a SQLAlchemy Session or Connection on postgresql+psycopg://, "
    "or Django's connection"
)
_CHECK = (
    "SELECT current_database(), to_regclass(%s) IS NOT NULL, "
    "current_setting('transaction_isolation')"
)
_INSTANCE = "SELECT value FROM {s}.meta WHERE name = 'instance'"
_ASYNC = (
    "connection= got an asyncio connection: send with delay_async or enqueue_async (or pass "
    "a blocking connection)"
)
_SNAPSHOT = ("repeatable read", "serializable")  # one snapshot for the whole transaction
_RETRY = ("40001", "40P01")  # serialization failure, deadlock: the whole transaction again
_MISSING = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
)


def _sqlalchemy(connection: Any) -> Any:
    """The DBAPI connection under a SQLAlchemy ``Session`` or ``Connection``."""
    if hasattr(connection, "get_bind") and callable(getattr(connection, "connection", None)):
        connection = connection.connection()  # a Session: its transaction's connection
    elif hasattr(connection, "in_transaction") and not connection.in_transaction():
        connection.begin()  # as SQLAlchemy's own first statement would: commit() ends it
    fairy = getattr(connection, "connection", None)
    raw = getattr(fairy, "driver_connection", None)
    if raw is None or not isinstance(raw, psycopg.Connection):
        driver = getattr(getattr(connection, "dialect", None), "driver", "?")
        raise ConfigurationError(
            f"connection= got a SQLAlchemy connection on the {driver!r} driver: Conveyor "
            "writes through psycopg 3; create the engine with a postgresql+psycopg:// URL"
        )
    return raw


def _django(connection: Any) -> Any:
    if getattr(connection, "vendor", None) != "postgresql":
        raise ConfigurationError(
            f"connection= got Django's connection to a {connection.vendor!r} database: "
            "Conveyor's jobs live in PostgreSQL; pass the connection of a PostgreSQL "
            "database (django.db.connections['<alias>'])"
        )
    connection.ensure_connection()
    return connection.connection


def raw_connection(connection: Any) -> Raw:
    """The psycopg connection behind what the caller passed as ``connection=``."""
    if isinstance(connection, psycopg.Connection | psycopg.AsyncConnection):
        return connection
    module = type(connection).__module__.split(".")[0]
    if module == "sqlalchemy":
        found: Raw = _sqlalchemy(connection)
    elif module == "django" and hasattr(connection, "ensure_connection"):
        found = _django(connection)
    elif module == "psycopg2":
        raise ConfigurationError(
            "connection= got a psycopg 2 connection: Conveyor writes through psycopg 3 "
            "(pip install 'conveyor[postgres]'); open the connection with psycopg.connect, "
            "or a SQLAlchemy engine on postgresql+psycopg://"
        )
    else:
        raise ConfigurationError(f"connection= takes {_KINDS}, not {type(connection).__qualname__}")
    if not isinstance(found, psycopg.Connection | psycopg.AsyncConnection):
        raise ConfigurationError(f"connection= takes {_KINDS}: this one is not on psycopg 3")
    return found


class Transactional:
    """The transactional enqueue of one broker; remembers the connections it checked."""

    def __init__(self, broker: PostgresCore) -> None:
        self._broker = broker
        self._checked: weakref.WeakSet[Raw] = weakref.WeakSet()
        self._enqueue = sql(ENQUEUE, broker.schema)
        self._check = (_CHECK, (f"{quoted(broker.schema)}.meta",))
        self._instance = sql(_INSTANCE, broker.schema)

    def enqueue(
        self, connection: Any, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        if type(connection).__module__.startswith("sqlalchemy.ext.asyncio"):
            raise ConfigurationError(_ASYNC)  # before SQLAlchemy is asked anything
        raw = raw_connection(connection)
        if isinstance(raw, psycopg.AsyncConnection):
            raise ConfigurationError(_ASYNC)
        params = self._params(raw, envelopes, events)
        alone = _alone(raw)
        try:
            with _own(psycopg.Cursor(raw, row_factory=tuple_row)) as cur:
                if raw not in self._checked:
                    found = cur.execute(*self._check).fetchone()
                    mark = cur.execute(self._instance).fetchone() if found and found[1] else None
                    self._verify(found, mark)
                    self._checked.add(raw)
                return enqueued(cur.execute(self._enqueue, params).fetchone())
        except psycopg.Error as exc:
            raise self._failure(exc, raw, alone) from exc

    async def enqueue_async(
        self, connection: Any, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        raw = await _async_raw(connection)
        if isinstance(raw, psycopg.Connection):
            return self.enqueue(raw, envelopes, events)
        # What the server must say about the keys, asked in a thread (``_params`` checks).
        await self._broker._db.learn_async(e.key for e in envelopes if e.key is not None)
        params = self._params(raw, envelopes, events)
        alone = _alone(raw)
        try:
            async with _own(psycopg.AsyncCursor(raw, row_factory=tuple_row)) as cur:
                if raw not in self._checked:
                    found = await (await cur.execute(*self._check)).fetchone()
                    mark = None
                    if found and found[1]:
                        mark = await (await cur.execute(self._instance)).fetchone()
                    self._verify(found, mark)
                    self._checked.add(raw)
                return enqueued(await (await cur.execute(self._enqueue, params)).fetchone())
        except psycopg.Error as exc:
            raise self._failure(exc, raw, alone) from exc

    def _params(
        self, raw: Raw, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> tuple[Any, ...]:
        """The statement's arguments, once the connection can take it (checked first: a
        bad connection writes nothing and leaves the transaction as it was; the port
        checked the envelopes)."""
        if raw.closed:
            raise ConfigurationError("connection= got a closed connection: pass an open one")
        if raw.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            raise ConfigurationError(
                "connection= got a connection whose transaction failed: roll it back first "
                "(nothing was enqueued)"
            )
        b = self._broker
        check_keys(envelopes, lambda text, what: self._check_text(raw, text, what))
        return enqueue_params(envelopes, events, b.events_kept, b._now(), time.time())

    def _check_text(self, raw: Raw, text: str, what: str) -> None:
        """``text`` can go through the caller's connection into the broker's database: the
        database stores it, and the connection's client encoding can send it as text the
        broker reads back. Where either side is SQL_ASCII nothing is converted: the bytes
        psycopg sends (UTF-8 on an SQL_ASCII connection) are stored as they are, which is
        the broker's text only if both sides are UTF8 or SQL_ASCII (else ASCII only).
        Otherwise the server converts from the client encoding, whose Python codec must be
        exact (``codec_of``; else ASCII only)."""
        db = self._broker._db
        db.check_text(text, what)
        client = raw.info.parameter_status("client_encoding") or "SQL_ASCII"
        plain = ("SQL_ASCII", "UTF8")
        if client == "SQL_ASCII" or db.encoding == "SQL_ASCII":
            sends = "utf-8" if client in plain and db.encoding in plain else "ascii"
        else:
            sends = codec_of(client) or "ascii"
        if unstorable(text, sends):
            raise refusal(
                what, text, f"this connection (client_encoding {client})",
                f"SET client_encoding TO 'UTF8' on it (the database is in {db.encoding}), "
                "or use ASCII",
            )  # fmt: skip

    def _verify(self, found: tuple[Any, ...] | None, mark: tuple[Any, ...] | None) -> None:
        """The connection reaches the broker's database and schema: the same ``instance``
        in a database of the same name (a copy of the database, ``createdb -T``, has the
        instance too; jobs written there would never reach the broker's workers). The
        ``meta`` table there without its rows is a snapshot taken before they were written
        (a REPEATABLE READ or SERIALIZABLE transaction begun before the first migration)."""
        b = self._broker
        database, isolation = (_text(found[0]), _text(found[2])) if found else ("?", "")
        if found and found[1] and mark is None and isolation in _SNAPSHOT:
            raise ConfigurationError(
                f"connection= is in a {isolation.upper()} transaction that began before "
                f"schema {b.schema!r} was created, so it sees Conveyor's tables empty: "
                "commit or roll it back and send in a new transaction, or run `conveyor "
                "migrate` before the application starts (nothing was enqueued)"
            )
        same = mark is not None and int(mark[0]) == b.instance
        if same and database == b._db.server_database:
            return
        if same:
            raise ConfigurationError(
                f"connection= reaches database {database!r}, a copy of the broker's "
                f"({b._db.server_database!r}, {b.url}): pass a connection to the database "
                "the broker uses, so the jobs commit with your writes (nothing was enqueued)"
            )
        what = "other Conveyor tables than" if mark is not None else "no Conveyor tables, unlike"
        raise ConfigurationError(
            f"connection= reaches database {database!r}, where schema {b.schema!r} holds "
            f"{what} the broker's ({b.url}): pass a connection to the database the broker "
            "uses, so the jobs commit with your writes (nothing was enqueued)"
        )

    def _failure(self, exc: psycopg.Error, raw: Raw, alone: bool) -> BrokerError:
        """An error on the caller's connection, told as one: which connection, what became
        of the caller's transaction, what to do. ``alone``: the statement was a transaction
        of its own (an autocommit connection outside ``transaction()``)."""
        state = exc.sqlstate or ""
        said = exc.diag.message_primary or str(exc)  # without PL/pgSQL's CONTEXT lines
        text = libpq_text(psycopg.Error(said), self._broker._db.url.secrets)
        code = f" (SQLSTATE {state})" if state else ""
        where = f"your connection (database {raw.info.dbname!r})"
        what = f"{type(exc).__module__}.{type(exc).__qualname__}{code}: {text}"
        if raw.broken or raw.closed:
            then = (
                "The job may have been written or not: send it again with the same job_id= "
                "(a job that was written is not written twice)"
                if alone
                else "Your transaction did not commit, the job neither: connect again and "
                "run the whole transaction again"
            )
            return BrokerError(f"{where} was lost: {what}. {then}")
        retry = state in _RETRY  # a serialization failure or a deadlock passes on a retry
        if alone:
            then = "Nothing was written" + ("; send it again" if retry else "")
        else:
            then = "Your transaction failed (none of it commits, the job neither): roll it back"
            then += ", then run the whole transaction again" if retry else ""
        if isinstance(exc, _MISSING) and _ours(exc, self._broker.schema):
            then += (
                ". The Conveyor schema is missing or older than this Conveyor: run "
                "`conveyor migrate`"
            )
        return BrokerError(f"PostgreSQL error on {where}: {what}. {then}")


def _alone(raw: Raw) -> bool:
    """The statement about to run on ``raw`` commits by itself."""
    idle = raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    return raw.autocommit and idle


def _ours(exc: psycopg.Error, schema: str) -> bool:
    """What is missing is Conveyor's, not a relation of the caller's own statement (in
    pipeline mode, its error comes back with the enqueue's): PostgreSQL names Conveyor's
    schema or function in the message, or, for what the function reads, in the context."""
    said, context = exc.diag.message_primary or "", exc.diag.context or ""
    return (
        f'schema "{schema}"' in said
        or f"function {schema}.enqueue(" in said
        or any(f"function {name}." in context for name in (schema, f'"{schema}"'))
    )


def _text(value: str | bytes) -> str:
    """Text read through the caller's connection (bytes where it is SQL_ASCII)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


C = TypeVar("C", psycopg.Cursor[tuple[Any, ...]], psycopg.AsyncCursor[tuple[Any, ...]])


def _own(cur: C) -> C:
    """A plain cursor on the caller's connection, whatever cursor class the connection makes
    (a ``RawCursor`` takes ``$1``, not ``%s``), that sends lists as arrays even where the
    caller made the connection send them otherwise (as JSON, say)."""
    cur.adapters.register_dumper(list, ListDumper)
    cur.adapters.register_dumper(list, ListBinaryDumper)
    return cur


async def _async_raw(connection: Any) -> Raw:
    """As ``raw_connection``, with SQLAlchemy's asyncio ``AsyncSession`` and
    ``AsyncConnection`` too."""
    if type(connection).__module__.startswith("sqlalchemy.ext.asyncio"):
        if hasattr(connection, "get_bind"):  # an AsyncSession: its transaction's connection
            connection = await connection.connection()
        elif not connection.in_transaction():
            await connection.begin()  # as SQLAlchemy's own first statement would
        fairy = await connection.get_raw_connection()
        raw = getattr(fairy, "driver_connection", None)
        if isinstance(raw, psycopg.AsyncConnection):
            return raw
        raise ConfigurationError(
            "connection= got a SQLAlchemy asyncio connection not on psycopg 3: create the "
            "engine with a postgresql+psycopg:// URL"
        )
    return raw_connection(connection)
