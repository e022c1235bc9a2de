"""Enqueue inside the application's own transaction (docs/postgres.md): jobs written through
the caller's connection commit with its writes and are gone with its rollback.

On the machine's PostgreSQL (``tests/postgres_server.py``): each test has a schema of its
own for Conveyor, and an ``orders`` table of the application's in the same schema.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from conveyor import Conveyor, InvalidOption
from conveyor._errors import BrokerError, BrokerUnavailable, ConfigurationError, DependencyNotFound
from conveyor._message import JobStatus
from conveyor.testing import drain
from postgres_server import _admin_connect, _with_database, drop_schema, schema_url, unique_schema

pytestmark = pytest.mark.postgres


class Shop:
    """An app on a schema of its own, and the application's connection beside it."""

    def __init__(self, url: str) -> None:
        self.database = url
        self.schema = unique_schema()
        self.app = Conveyor(schema_url(url, self.schema))

        @self.app.task
        def send_receipt(order: int) -> str:
            return f"receipt {order}"

        self.send_receipt = send_receipt
        self.app.open()  # migrates: the schema exists from here on
        self.conn = psycopg.connect(url)  # not autocommit: a transaction per block
        with self.conn.transaction():
            self.conn.execute(f'CREATE TABLE "{self.schema}".orders (id int PRIMARY KEY)')

    def order(self, conn: Any, number: int) -> None:
        conn.execute(f'INSERT INTO "{self.schema}".orders VALUES (%s)', (number,))

    def close(self) -> None:
        self.conn.close()
        self.app.close()
        drop_schema(self.database, self.schema)


@pytest.fixture
def shop(postgres_url: str) -> Iterator[Shop]:
    s = Shop(postgres_url)
    try:
        yield s
    finally:
        s.close()


def _status(app: Conveyor, job_id: str) -> JobStatus | None:
    [record] = app.broker.get([job_id])
    return None if record is None else record.status


def test_a_job_commits_with_the_transaction_and_wakes_a_blocked_worker(shop: Shop) -> None:
    broker = shop.app.broker
    fetched: list[list[Any]] = []
    worker = threading.Thread(
        target=lambda: fetched.append(broker.fetch(["default"], "w", 1, 30, 5))
    )
    worker.start()
    with shop.conn.transaction():
        shop.order(shop.conn, 1)
        job = shop.send_receipt.options(connection=shop.conn).delay(1)
        assert _status(shop.app, job.id) is None  # not visible outside the transaction
    worker.join(10)
    assert [d.id for d in fetched[0]] == [job.id]  # woken by the commit's notification


def test_a_rolled_back_transaction_takes_its_jobs_and_events_along(shop: Shop) -> None:
    tail = shop.app.broker.events_tail()
    with pytest.raises(RuntimeError), shop.conn.transaction():
        shop.order(shop.conn, 2)
        job = shop.app.options(connection=shop.conn).enqueue(shop.send_receipt, 2)
        raise RuntimeError("payment declined")
    assert _status(shop.app, job.id) is None
    assert shop.app.broker.stats() == []
    assert shop.app.broker.read_events(tail, 0.0, 10) == []


def test_enqueue_many_writes_the_batch_in_the_callers_transaction(shop: Shop) -> None:
    with shop.conn.transaction():
        sigs = [shop.send_receipt.options(connection=shop.conn).s(i) for i in range(3)]
        jobs = shop.app.enqueue_many(sigs)
    assert [_status(shop.app, j.id) for j in jobs] == [JobStatus.QUEUED] * 3
    mixed = [shop.send_receipt.options(connection=shop.conn).s(1), shop.send_receipt.s(2)]
    with pytest.raises(InvalidOption, match="same connection"):
        shop.app.enqueue_many(mixed)


def test_an_unknown_dependency_writes_nothing_and_leaves_the_transaction_usable(
    shop: Shop,
) -> None:
    with shop.conn.transaction():
        shop.order(shop.conn, 3)
        with pytest.raises(DependencyNotFound):
            shop.send_receipt.options(connection=shop.conn, depends_on="nope").delay(3)
        shop.order(shop.conn, 4)  # the transaction goes on
    rows = shop.conn.execute(f'SELECT id FROM "{shop.schema}".orders ORDER BY id').fetchall()
    assert rows == [(3,), (4,)]
    assert shop.app.broker.stats() == []


def test_a_sqlalchemy_session_commits_or_rolls_back_the_job(shop: Shop) -> None:
    url = shop.database.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sqlalchemy.create_engine(url)
    try:
        with Session(engine) as session:
            kept = shop.send_receipt.options(connection=session).delay(5)
            session.commit()
            dropped = shop.send_receipt.options(connection=session).delay(6)
            session.rollback()
        with engine.connect() as conn:
            on_conn = shop.send_receipt.options(connection=conn).delay(7)
            conn.commit()
    finally:
        engine.dispose()
    assert _status(shop.app, kept.id) is JobStatus.QUEUED
    assert _status(shop.app, dropped.id) is None
    assert _status(shop.app, on_conn.id) is JobStatus.QUEUED


def test_async_sends_go_through_an_async_connection(shop: Shop) -> None:
    async def main() -> tuple[str, str, str]:
        conn = await psycopg.AsyncConnection.connect(shop.database)
        try:
            async with conn.transaction():
                first = await shop.send_receipt.options(connection=conn).delay_async(8)
        finally:
            await conn.close()
        url = shop.database.replace("postgresql://", "postgresql+psycopg://", 1)
        engine = create_async_engine(url)
        try:
            async with engine.connect() as sa_conn:
                second = await shop.send_receipt.options(connection=sa_conn).delay_async(9)
                await sa_conn.commit()
            async with AsyncSession(engine) as session:
                third = await shop.send_receipt.options(connection=session).delay_async(10)
                await session.commit()
        finally:
            await engine.dispose()
        return first.id, second.id, third.id

    ids = asyncio.run(main())
    assert [_status(shop.app, i) for i in ids] == [JobStatus.QUEUED] * 3


def test_a_connection_to_another_database_is_refused_and_writes_nothing(
    shop: Shop, postgres_url: str
) -> None:
    elsewhere = postgres_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(elsewhere) as other, other.transaction():
        with pytest.raises(ConfigurationError, match="reaches database 'postgres'"):
            shop.send_receipt.options(connection=other).delay(10)
        other.execute("SELECT 1")  # its transaction is still usable
    assert shop.app.broker.stats() == []


def test_a_connection_to_a_copy_of_the_brokers_database_is_refused(postgres_url: str) -> None:
    """A copy (``createdb -T``, a restored dump, a test runner's clone) holds the same
    Conveyor tables, instance number included: jobs written there would never be run."""
    admin = _admin_connect()
    name = "conveyor_copy_" + uuid.uuid4().hex[:8]
    admin.execute(f'CREATE DATABASE "{name}"')
    original = _with_database(postgres_url, name)
    try:
        Conveyor(original).open().close()  # migrated, and no connection left to it
        admin.execute(f'CREATE DATABASE "{name}_copy" TEMPLATE "{name}"')
        with (
            Conveyor(original) as app,
            psycopg.connect(_with_database(postgres_url, f"{name}_copy")) as copy,
        ):
            with pytest.raises(ConfigurationError, match=f"reaches database '{name}_copy', a copy"):
                app.options(connection=copy).enqueue(print, "lost")
            copy.execute("SELECT 1")  # its transaction is still usable
            assert app.broker.stats() == []
    finally:
        for db in (f"{name}_copy", name):
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


def test_a_connection_whose_cursors_or_list_dumper_differ_still_enqueues(shop: Shop) -> None:
    """The caller's connection may make RawCursors (``$1`` placeholders) and send lists as
    JSON: the job goes through a plain cursor that sends lists as arrays all the same."""
    from psycopg.types.json import JsonbDumper

    with psycopg.connect(shop.database, cursor_factory=psycopg.RawCursor) as raw:
        raw.adapters.register_dumper(list, JsonbDumper)
        with raw.transaction():
            job = shop.send_receipt.options(connection=raw).delay(12)
        assert raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert _status(shop.app, job.id) is JobStatus.QUEUED


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("postgresql://host/db", "takes a psycopg 3 connection"),
        (object(), "not object"),
    ],
)
def test_a_wrong_kind_of_connection_is_refused(shop: Shop, given: object, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        shop.send_receipt.options(connection=given).delay(11)
    closed = psycopg.connect(shop.database)
    closed.close()
    with pytest.raises(ConfigurationError, match="closed connection"):
        shop.send_receipt.options(connection=closed).delay(12)


DJANGO = """
import json, sys
import django
from django.conf import settings
from conveyor import Conveyor

params, url = json.loads(sys.argv[1]), sys.argv[2]
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": params["dbname"],
    "USER": params.get("user", ""), "PASSWORD": params.get("password", ""),
    "HOST": params.get("host", ""), "PORT": params.get("port", "")}})
django.setup()
from django.db import connection, transaction

app = Conveyor(url)
with transaction.atomic():
    kept = app.options(connection=connection).enqueue(print, "kept")
try:
    with transaction.atomic():
        dropped = app.options(connection=connection).enqueue(print, "dropped")
        raise RuntimeError
except RuntimeError:
    pass
print(kept.id, dropped.id)
"""


def test_djangos_connection_commits_or_rolls_back_the_job(
    shop: Shop, postgres_url: str, tmp_path: Any
) -> None:
    import json
    import subprocess
    import sys

    from psycopg.conninfo import conninfo_to_dict

    params = json.dumps({k: str(v) for k, v in conninfo_to_dict(postgres_url).items()})
    script = tmp_path / "django_enqueue.py"
    script.write_text(DJANGO)
    url = schema_url(postgres_url, shop.schema)
    out = subprocess.run(
        [sys.executable, str(script), params, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    kept, dropped = out.stdout.split()
    assert _status(shop.app, kept) is JobStatus.QUEUED
    assert _status(shop.app, dropped) is None


def _pad_events_to(app: Conveyor, database: str, schema: str, target: int) -> None:
    """Publish events until the schema's event sequence stands at ``target``."""
    with psycopg.connect(database, autocommit=True) as conn:
        while True:
            row = conn.execute(f'SELECT last_value FROM "{schema}".events_seq_seq').fetchone()
            last = int(row[0]) if row is not None else 0
            if last >= target:
                return
            app.broker.publish([b'{"kind":"pad"}'] * min(32, target - last))


def test_a_trim_in_an_open_transaction_never_holds_up_a_workers_finish(
    postgres_url: str,
) -> None:
    """The enqueue that crosses a multiple of 1,024 events trims the log inside the
    caller's transaction, which holds the rows it deleted until it commits: the next trim
    (here a worker's) skips them instead of waiting, and the job ends."""
    schema = unique_schema()
    app = Conveyor(schema_url(postgres_url, schema), events_kept=10)

    @app.task
    def ok(x: int) -> int:
        return x

    app.open()  # migrates: the schema exists from here on
    conn = psycopg.connect(postgres_url)
    try:
        _pad_events_to(app, postgres_url, schema, 1023)
        with conn.transaction():
            ok.options(connection=conn, queue="tb").delay(1)  # event 1,024: trims here
            job = ok.options(queue="tb").delay(2)
            _pad_events_to(app, postgres_url, schema, 2047)  # the worker crosses 2,048
            worker = threading.Thread(target=lambda: drain(app, ["tb"], timeout=20), daemon=True)
            worker.start()
            worker.join(5)
            ended = _status(app, job.id)
        worker.join(20)  # (without the fix it went on once the transaction committed)
        assert ended is JobStatus.SUCCEEDED
    finally:
        conn.close()
        app.close()
        drop_schema(postgres_url, schema)


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", maxsplit=1)[0]


def _told_as_callers(exc: BrokerError, shop: Shop) -> None:
    """Said of the caller's connection and database, not of the broker and its URL."""
    said = str(exc)
    assert f"your connection (database '{_database_name(shop.database)}')" in said
    assert "postgresql://" not in said and "PL/pgSQL" not in said and "CONTEXT" not in said
    assert not isinstance(exc, BrokerUnavailable)


def test_an_error_of_the_callers_own_statement_is_told_as_the_callers(shop: Shop) -> None:
    """In pipeline mode the error of the application's own statement comes back with the
    enqueue: it is not the broker's, and `conveyor migrate` would not help."""
    shop.send_receipt.options(connection=shop.conn).delay(1)  # checked
    shop.conn.rollback()
    with pytest.raises(BrokerError) as caught, shop.conn.pipeline():
        shop.conn.execute("INSERT INTO no_such_orders VALUES (1)")
        shop.send_receipt.options(connection=shop.conn).delay(2)
    _told_as_callers(caught.value, shop)
    assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)
    assert 'relation "no_such_orders" does not exist' in str(caught.value)
    assert "roll it back" in str(caught.value) and "migrate" not in str(caught.value)
    shop.conn.rollback()


@pytest.mark.parametrize("gone", ["function", "schema"])
def test_conveyors_own_missing_function_or_schema_still_says_migrate(shop: Shop, gone: str) -> None:
    shop.send_receipt.options(connection=shop.conn).delay(1)  # checked
    shop.conn.rollback()
    with psycopg.connect(shop.database, autocommit=True) as admin:
        if gone == "function":
            admin.execute(f'ALTER FUNCTION "{shop.schema}".enqueue RENAME TO enqueue_old')
        else:
            admin.execute(f'ALTER SCHEMA "{shop.schema}" RENAME TO "{shop.schema}_old"')
    try:
        with pytest.raises(BrokerError, match="run `conveyor migrate`") as caught:
            shop.send_receipt.options(connection=shop.conn).delay(2)
        _told_as_callers(caught.value, shop)
        shop.conn.rollback()
    finally:
        with psycopg.connect(shop.database, autocommit=True) as admin:
            if gone == "function":
                admin.execute(f'ALTER FUNCTION "{shop.schema}".enqueue_old RENAME TO enqueue')
            else:
                admin.execute(f'ALTER SCHEMA "{shop.schema}_old" RENAME TO "{shop.schema}"')


def test_a_serialization_failure_keeps_psycopgs_error_and_says_to_retry_the_transaction(
    shop: Shop,
) -> None:
    """A REPEATABLE READ transaction enqueueing a unique key another transaction committed
    after its snapshot: `except psycopg.errors.SerializationFailure` (on `__cause__`) can
    retry it, and the message says to run the whole transaction again."""
    with psycopg.connect(shop.database) as late:
        late.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        late.execute("SELECT 1")  # its snapshot
        with shop.conn.transaction():
            shop.send_receipt.options(connection=shop.conn, key="receipt-1").delay(1)
        with pytest.raises(BrokerError) as caught:
            shop.send_receipt.options(connection=late, key="receipt-1").delay(1)
        late.rollback()
    _told_as_callers(caught.value, shop)
    assert isinstance(caught.value.__cause__, psycopg.errors.SerializationFailure)
    assert "SerializationFailure (SQLSTATE 40001)" in str(caught.value)
    assert "roll it back, then run the whole transaction again" in str(caught.value)


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_read_only_transaction_says_the_transaction_failed(shop: Shop, autocommit: bool) -> None:
    with psycopg.connect(shop.database, autocommit=autocommit) as conn:
        conn.execute("SET default_transaction_read_only = on")
        conn.commit()  # the next transaction is read-only
        with pytest.raises(BrokerError) as caught:
            shop.send_receipt.options(connection=conn).delay(1)
        _told_as_callers(caught.value, shop)
        assert isinstance(caught.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
        said = str(caught.value)
        if autocommit:  # the statement was a transaction of its own
            assert "Nothing was written" in said and "transaction failed" not in said
        else:
            assert "Your transaction failed" in said and "roll it back" in said
    assert shop.app.broker.stats() == []


def test_an_async_connections_error_is_told_as_the_callers(shop: Shop) -> None:
    async def main() -> BrokerError:
        conn = await psycopg.AsyncConnection.connect(shop.database)
        try:
            await conn.execute("SET TRANSACTION READ ONLY")
            with pytest.raises(BrokerError) as caught:
                await shop.send_receipt.options(connection=conn).delay_async(1)
            await conn.rollback()
        finally:
            await conn.close()
        return caught.value

    failed = asyncio.run(main())
    _told_as_callers(failed, shop)
    assert "Your transaction failed" in str(failed)


def test_a_lost_caller_connection_says_the_transaction_did_not_commit(shop: Shop) -> None:
    """Not `BrokerUnavailable`, whose advice (send again with the same job_id=) cannot
    bring back the caller's lost transaction."""
    conn = psycopg.connect(shop.database)
    try:
        shop.order(conn, 1)  # the transaction the connection takes down with it
        pid = conn.info.backend_pid
        with psycopg.connect(shop.database, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
            while admin.execute(gone, (pid,)).fetchone() != (0,):
                time.sleep(0.01)
        with pytest.raises(BrokerError) as caught:
            shop.send_receipt.options(connection=conn).delay(1)
    finally:
        conn.close()
    _told_as_callers(caught.value, shop)
    said = str(caught.value)
    assert "was lost" in said and "Your transaction did not commit" in said
    assert "job_id=" not in said
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_a_blocking_send_with_a_sqlalchemy_asyncio_connection_says_to_send_async(
    shop: Shop,
) -> None:
    async def main() -> list[str]:
        url = shop.database.replace("postgresql://", "postgresql+psycopg://", 1)
        engine = create_async_engine(url)
        said = []
        try:
            async with AsyncSession(engine) as session, engine.connect() as conn:
                for given in (session, conn):
                    with pytest.raises(ConfigurationError) as caught:
                        shop.send_receipt.options(connection=given).delay(1)
                    said.append(str(caught.value))
        finally:
            await engine.dispose()
        return said

    for said in asyncio.run(main()):
        assert "got an asyncio connection: send with delay_async or enqueue_async" in said


def test_a_snapshot_older_than_the_schema_says_so(postgres_url: str) -> None:
    """A REPEATABLE READ transaction that began before the broker created its schema sees
    the tables but not their rows: the right database, refused for what it is; the next
    transaction on the connection enqueues."""
    schema = unique_schema()
    app = Conveyor(schema_url(postgres_url, schema))
    conn = psycopg.connect(postgres_url)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        conn.execute("SELECT 1")  # its snapshot, before the schema
        app.open()  # migrates: creates the schema
        with pytest.raises(ConfigurationError) as caught:
            app.options(connection=conn).enqueue(print, "early")
        said = str(caught.value)
        assert "REPEATABLE READ transaction that began before schema" in said
        assert "conveyor migrate" in said and "pass a connection to the database" not in said
        conn.rollback()
        with conn.transaction():
            job = app.options(connection=conn).enqueue(print, "later")
        assert _status(app, job.id) is JobStatus.QUEUED
    finally:
        conn.close()
        app.close()
        drop_schema(postgres_url, schema)
