"""Opening an SQLite database: an up-to-date file is only read, so a process starts while
another holds the write lock (a producer beside busy workers); a new or old file is migrated
under the write lock, and the version is read again inside it. And how a write waits for
another process's write lock: polled by the adapter, not in SQLite's busy handler."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor._errors import BrokerError
from conveyor._message import Envelope, JobStatus, new_job_id
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.brokers.sqlite import _schema as schema


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.fixture
def holder(db: str) -> Iterator[sqlite3.Connection]:
    """Another connection to the file, for taking its write lock."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def _version(db: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    return int(row[0])


def _write_version_1(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        m.setattr(schema, "SCHEMA_VERSION", 1)
        SQLiteBroker(db).close()
    assert _version(db) == 1


def test_an_up_to_date_file_opens_and_reads_while_another_holds_the_write_lock(
    db: str, holder: sqlite3.Connection
) -> None:
    first = SQLiteBroker(db)
    job = Envelope(id=new_job_id(), queue="default", payload=b"p")
    first.enqueue([job])
    first.close()

    holder.execute("BEGIN IMMEDIATE")  # held for the whole open and the reads below
    b = SQLiteBroker(db, busy_timeout=0.5)
    try:
        [stats] = b.stats()
        assert (stats.queue, stats.queued) == ("default", 1)
        [record] = b.get([job.id])
        assert record is not None and record.status is JobStatus.QUEUED
        assert holder.in_transaction  # the lock was held all along
        with pytest.raises(BrokerError, match="stayed locked"):
            b.enqueue([Envelope(id=new_job_id(), queue="default", payload=b"p")])
        holder.execute("COMMIT")
        assert len(b.enqueue([Envelope(id=new_job_id(), queue="default", payload=b"p")])) == 1
    finally:
        b.close()


def test_an_old_file_is_migrated_under_the_write_lock_once_it_is_free(
    db: str, holder: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_version_1(db, monkeypatch)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(BrokerError, match="stayed locked"):
        SQLiteBroker(db, busy_timeout=0.2)
    holder.execute("COMMIT")
    assert _version(db) == 1  # the failed open changed nothing
    SQLiteBroker(db, busy_timeout=0.2).close()
    assert _version(db) == schema.SCHEMA_VERSION


def test_a_migration_done_by_another_process_meanwhile_is_not_applied_twice(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_version_1(db, monkeypatch)
    read_version = schema.schema_version
    reads: list[int] = []

    def racing(conn: sqlite3.Connection) -> int:
        version = read_version(conn)
        if not reads:  # between the first read and BEGIN IMMEDIATE, another opener migrates
            monkeypatch.setattr(schema, "schema_version", read_version)
            SQLiteBroker(db).close()
            monkeypatch.setattr(schema, "schema_version", racing)
        reads.append(version)
        return version

    monkeypatch.setattr(schema, "schema_version", racing)
    SQLiteBroker(db).close()  # v2's ALTER TABLE run twice would fail: "duplicate column"
    assert reads == [1, schema.SCHEMA_VERSION]
    assert _version(db) == schema.SCHEMA_VERSION


def test_a_new_file_is_created_and_a_second_open_only_reads_it(
    db: str, holder: sqlite3.Connection
) -> None:
    SQLiteBroker(db, busy_timeout=0.5).close()
    assert _version(db) == schema.SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    holder.execute("BEGIN IMMEDIATE")
    SQLiteBroker(db, busy_timeout=0.5).close()


def test_a_write_waits_for_another_write_lock_that_ends_within_busy_timeout(db: str) -> None:
    b = SQLiteBroker(db, busy_timeout=10.0)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        release.start()
        try:
            ids = b.enqueue([Envelope(id=new_job_id(), queue="default", payload=b"p")])
        finally:
            release.join()
        assert len(ids) == 1
        assert not holder.in_transaction  # the enqueue came after the lock was let go
    finally:
        holder.close()
        b.close()


def test_writes_wait_by_polling_and_reads_keep_sqlite_busy_handler(db: str) -> None:
    b = SQLiteBroker(db, busy_timeout=2.5)
    try:
        for _ in range(2):  # each switch sets the pragma, whichever came last
            with b._db.write() as conn:
                assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
            with b._db.read() as conn:
                assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        seen: list[int] = []

        def on_a_new_thread() -> None:  # a thread's own connection starts with the handler
            with b._db.read() as conn:
                seen.append(conn.execute("PRAGMA busy_timeout").fetchone()[0])

        t = threading.Thread(target=on_a_new_thread)
        t.start()
        t.join()
        assert seen == [2500]
    finally:
        b.close()
