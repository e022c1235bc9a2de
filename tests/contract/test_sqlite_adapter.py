"""What only the SQLite adapter promises, beyond the conformance suite: its URL, its schema
versions, several processes on one file, wake-ups across processes, errors translated."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest

from conveyor import Conveyor
from conveyor._clock import FakeClock
from conveyor._errors import BrokerError, ConfigurationError, InvalidURL, JobNotFound
from conveyor._message import Envelope, JobStatus, new_job_id
from conveyor.brokers import Finish, LeaseState, open_broker
from conveyor.brokers.sqlite import SQLiteBroker, sqlite_path
from conveyor.brokers.sqlite import _core as sqlite_core
from conveyor.brokers.sqlite import _database as sqlite_database
from conveyor.brokers.sqlite import _schema as schema
from conveyor.brokers.sqlite import _sql as sqlite_sql

# A wake-up must beat the 0.5 s safety net; the tests of wake-ups stretch it to 60 s (the
# waiter's own timeout), so that one that is not woken sits out a minute, whatever the load.
PROMPT = 10.0
STRETCHED_NET = 60.0


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.fixture
def broker(db: str) -> Iterator[SQLiteBroker]:
    b = SQLiteBroker(db)
    yield b
    b.close()


def env(queue: str = "default", **kw: object) -> Envelope:
    return Envelope(id=new_job_id(), queue=queue, payload=b"\x00p", **kw)  # type: ignore[arg-type]


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///./x.db", "./x.db"),
        ("sqlite:///x.db", "x.db"),
        ("sqlite:///sub/dir/x.db", "sub/dir/x.db"),
        ("sqlite:////abs/x.db", "/abs/x.db"),
        ("SQLite:////abs/my%20jobs.db", "/abs/my jobs.db"),
        ("sqlite:////srv/app%232/what%3F/100%25/jobs.db", "/srv/app#2/what?/100%/jobs.db"),
    ],
)
def test_url_names_a_relative_or_absolute_file(url: str, path: str) -> None:
    assert sqlite_path(url) == path


def test_a_relative_url_is_shown_by_the_absolute_path_of_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `conveyor worker` logged "broker sqlite:///./conveyor.db": which file, from which folder?
    monkeypatch.chdir(tmp_path)
    with open_broker("sqlite:///./conveyor.db") as b:
        assert b.url == f"sqlite:///{tmp_path}/conveyor.db"
    odd = tmp_path / "app#2" / "100%" / "jobs.db"
    odd.parent.mkdir(parents=True)
    with SQLiteBroker(str(odd)) as b:  # the URL shown opens the same file
        assert sqlite_path(b.url) == str(odd)


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("sqlite://:memory:", "memory://"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://host/x.db", "sqlite:///relative/path.db"),
        ("sqlite:///", "name a database file"),
        ("sqlite:///dir/", "name a database file"),
        ("sqlite:///x.db?mode=ro", "options are not supported"),
        ("sqlite:x.db", "sqlite:///relative/path.db"),
        ("redis://localhost/0", "sqlite:////absolute/path.db"),
    ],
)
def test_bad_url_says_what_to_write(url: str, hint: str) -> None:
    with pytest.raises(InvalidURL, match=hint.replace("?", r"\?")):
        sqlite_path(url)


@pytest.mark.parametrize("url", ["sqlite:////srv/app#2/jobs.db", "sqlite:////srv/what?/jobs.db"])
def test_a_hash_or_question_mark_in_a_path_is_told_to_be_percent_encoded(url: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        sqlite_path(url)
    said = str(caught.value)
    assert "a '#', '?' or '%' in a folder or file name is written percent-encoded" in said
    assert "(%23, %3F, %25)" in said


def test_the_factory_opens_a_relative_url_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    b = open_broker("sqlite:///./conveyor.db")
    try:
        assert isinstance(b, SQLiteBroker)
        b.enqueue([env()])
        monkeypatch.chdir("/")  # threads opening connections later must find the same file
        got = threading.Thread(target=lambda: assert_one(b))
        got.start()
        got.join()
    finally:
        b.close()
    assert (tmp_path / "conveyor.db").exists()


def assert_one(b: SQLiteBroker) -> None:
    assert len(b.fetch(["default"], "c", 10, 30.0, 0.0)) == 1


# -- the schema ------------------------------------------------------------------------------


def _meta(db: str) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT name, value FROM meta").fetchall())


def test_a_new_file_gets_the_current_schema_in_wal_mode(db: str, broker: SQLiteBroker) -> None:
    assert _meta(db)["schema_version"] == schema.SCHEMA_VERSION
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"meta", "jobs", "kv", "workers"} <= tables


def test_reopening_keeps_the_data_and_migrates_nothing(db: str) -> None:
    first = SQLiteBroker(db)
    job = env()
    first.enqueue([job])
    first.kv.set("k", b"v")
    first.close()
    again = SQLiteBroker(db)
    try:
        assert [d.id for d in again.fetch(["default"], "c", 10, 30.0, 0.0)] == [job.id]
        assert again.kv.get("k") == b"v"
    finally:
        again.close()
    assert _meta(db)["schema_version"] == schema.SCHEMA_VERSION


def test_a_file_from_a_newer_conveyor_is_refused_clearly(db: str) -> None:
    SQLiteBroker(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    with pytest.raises(ConfigurationError, match=r"newer Conveyor.*Upgrade conveyor"):
        SQLiteBroker(db)


def test_migrations_apply_in_order_and_all_or_nothing(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = schema.MIGRATIONS[0]
    monkeypatch.setattr(schema, "MIGRATIONS", (v1,))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 1)
    SQLiteBroker(db).close()
    v2 = ("CREATE TABLE extra (x INTEGER)", "INSERT INTO extra VALUES (1)")
    broken_v3 = ("CREATE TABLE extra3 (x INTEGER)", "THIS IS NOT SQL")
    monkeypatch.setattr(schema, "MIGRATIONS", (v1, v2, broken_v3))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 3)
    with pytest.raises(BrokerError, match="syntax error"):
        SQLiteBroker(db)
    with sqlite3.connect(db) as conn:  # v2 rolled back together with the broken v3
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "extra" not in tables
    assert _meta(db)["schema_version"] == 1

    monkeypatch.setattr(schema, "MIGRATIONS", (v1, v2))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    SQLiteBroker(db).close()
    assert _meta(db)["schema_version"] == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT x FROM extra").fetchall() == [(1,)]


def _old_file(
    db: str, version: int, job: Envelope, status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file as an older Conveyor wrote it (schema ``version``), holding one job."""
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        m.setattr(schema, "SCHEMA_VERSION", version)
        SQLiteBroker(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO jobs(id, queue, payload, priority, status, seq, updated_at, reason) "
            "VALUES (?, 'default', ?, 0, ?, 1, 0, 'boom')",
            (job.id, job.payload, status),
        )
    assert _meta(db)["schema_version"] == version


def test_a_version_1_file_gains_dependencies_and_keeps_its_jobs(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = env()
    _old_file(db, 1, parent, "queued", monkeypatch)  # written before depends_on existed
    b = SQLiteBroker(db)
    try:
        assert _meta(db)["schema_version"] == schema.SCHEMA_VERSION
        child = msgspec.structs.replace(env(), depends_on=(parent.id,))
        b.enqueue([child])
        assert b.get([child.id])[0].status is JobStatus.SCHEDULED  # type: ignore[union-attr]
        [d] = b.fetch(["default"], "c", 10, 30.0, 0.0)
        assert d.id == parent.id
        assert b.finish([Finish(d, JobStatus.SUCCEEDED, b"r")]) == [True]
        assert [x.id for x in b.fetch(["default"], "c", 10, 30.0, 0.0)] == [child.id]
    finally:
        b.close()


def test_a_version_2_file_gains_pause_and_requeue_of_its_jobs(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = env()
    _old_file(db, 2, failed, "failed", monkeypatch)  # written before pause and requeue's deps
    b = SQLiteBroker(db)
    try:
        assert _meta(db)["schema_version"] == schema.SCHEMA_VERSION == 4
        [record] = b.get([failed.id])
        assert record is not None and (record.status, record.reason) == (JobStatus.FAILED, "boom")
        b.pause("default")
    finally:
        b.close()
    b = SQLiteBroker(db)  # pausing is kept in the file
    try:
        assert b.paused() == ["default"]
        assert b.requeue([(failed.id, b"again")]) == [failed.id]
        assert b.fetch(["default"], "c", 10, 30.0, 0.0) == []
        b.resume("default")
        assert [d.payload for d in b.fetch(["default"], "c", 10, 30.0, 0.0)] == [b"again"]
    finally:
        b.close()


def test_a_version_3_file_gains_the_event_log_and_keeps_its_jobs(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = env()
    _old_file(db, 3, queued, "queued", monkeypatch)  # written before events
    b = SQLiteBroker(db)
    try:
        assert _meta(db)["schema_version"] == schema.SCHEMA_VERSION
        assert b.events_tail() == "0" and b.read_events(None, 0.0, 10) == []
        [d] = b.fetch(["default"], "c", 10, 30.0, 0.0)
        finish = Finish(d, JobStatus.SUCCEEDED, b"r", event=b'{"type":"job.succeeded"}')
        assert b.finish([finish], [b'{"type":"job.started"}']) == [True]
        assert [e for _, e in b.read_events(None, 0.0, 10)] == [
            b'{"type":"job.started"}',
            b'{"type":"job.succeeded"}',
        ]
    finally:
        b.close()


# -- errors ----------------------------------------------------------------------------------


def test_a_held_write_lock_becomes_a_broker_error_saying_what_to_do(db: str) -> None:
    b = SQLiteBroker(db, busy_timeout=0.2)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        said = r"stayed locked .*: another connection \(a long write transaction, a sqlite3"
        with pytest.raises(BrokerError, match=said):
            b.enqueue([env()])
        holder.execute("ROLLBACK")
        assert len(b.enqueue([env()])) == 1
    finally:
        holder.close()
        b.close()


def test_a_full_disk_is_a_broker_error_saying_to_free_space() -> None:
    exc = sqlite3.OperationalError("database or disk is full")
    said = str(sqlite_database.broker_error(exc, "/srv/app/jobs.db", 5.0))
    assert said == (
        "the filesystem holding /srv/app/jobs.db (and its -wal) is full: free space; queued "
        "jobs are kept and workers resume by themselves once there is room"
    )


def test_a_full_database_refuses_a_job_keeps_the_others_and_takes_jobs_again_with_room(
    broker: SQLiteBroker,
) -> None:
    kept = env()
    broker.enqueue([kept])
    with broker._db.read() as conn:  # this thread's connection: no page beyond those it has
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(BrokerError, match=r"jobs\.db \(and its -wal\) is full: free space"):
        broker.enqueue([Envelope(id=new_job_id(), queue="default", payload=b"x" * 100_000)])
    with broker._db.read() as conn:
        conn.execute("PRAGMA max_page_count = 1073741823")
    later = env()
    assert broker.enqueue([later]) == [later.id]
    assert [d.id for d in broker.fetch(["default"], "c", 10, 30.0, 0.0)] == [kept.id, later.id]


def test_a_file_that_is_not_a_database_is_a_broker_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(BrokerError, match=r"junk\.db"):
        SQLiteBroker(str(junk))


def test_a_path_that_is_a_folder_is_refused_as_one(tmp_path: Path) -> None:
    # It was "cannot open ...: check that this user may read and write it", to a user who
    # may: the advice pointed the wrong way.
    (tmp_path / "jobs.db").mkdir()
    with pytest.raises(ConfigurationError, match=r"jobs\.db is a folder, not a file"):
        SQLiteBroker(str(tmp_path / "jobs.db"))
    app = Conveyor(f"sqlite:///{tmp_path / 'jobs.db'}")
    with pytest.raises(ConfigurationError, match=r"jobs\.db/conveyor\.db"):
        app.broker.stats()


def test_a_folder_that_cannot_be_made_is_a_broker_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(BrokerError, match=r"cannot create the SQLite database .*plain/x\.db"):
        SQLiteBroker(str(tmp_path / "plain" / "x.db"))


# -- leases and fencing on a fake clock ------------------------------------------------------


def test_expired_lease_is_reclaimed_and_the_stale_token_fenced_off(db: str) -> None:
    clock = FakeClock()
    b = SQLiteBroker(db, clock=clock)
    try:
        job = env()
        b.enqueue([job])
        [stale] = b.fetch(["default"], "w1", 1, 5.0, 0.0)
        clock.advance(4)
        assert b.fetch(["default"], "w2", 1, 5.0, 0.0) == []  # still leased
        clock.advance(2)  # w1 died: its lease ran out
        [live] = b.fetch(["default"], "w2", 1, 5.0, 0.0)
        assert (live.id, live.deliveries) == (job.id, 2)
        assert live.token != stale.token

        assert b.renew([stale], 5.0) == [LeaseState.LOST]
        assert not b.progress(stale, 0.5, "zombie")
        assert b.release([stale]) == [False]
        assert b.finish([Finish(stale, JobStatus.SUCCEEDED, b"zombie")]) == [False]
        assert b.finish([Finish(live, JobStatus.SUCCEEDED, b"live")]) == [True]
        [record] = b.get([job.id])
        assert record is not None
        assert (record.status, record.result) == (JobStatus.SUCCEEDED, b"live")
    finally:
        b.close()


def test_a_renewal_writes_a_lease_only_once_a_third_of_it_is_gone(db: str) -> None:
    # A worker renews each second (the answer carries cancels): a write each time was a
    # write transaction's pages per second per worker for nothing.
    clock = FakeClock()
    b = SQLiteBroker(db, clock=clock)
    watcher = sqlite3.connect(db)
    try:
        b.enqueue([env()])
        [d] = b.fetch(["default"], "w", 1, 30.0, 0.0)

        def version() -> int:  # changes when another connection commits a change
            return int(watcher.execute("PRAGMA data_version").fetchone()[0])

        before = version()
        for _ in range(5):
            clock.advance(1)
            assert b.renew([d], 30.0) == [LeaseState.OK]
        assert version() == before
        b.cancel(d.id)
        changed = version()
        clock.advance(6)  # 11 s into the lease: under two thirds left
        assert b.renew([d], 30.0) == [LeaseState.CANCELLED]
        assert version() != changed
    finally:
        watcher.close()
        b.close()


def test_expired_rows_are_deleted_lazily(db: str) -> None:
    clock = FakeClock()
    b = SQLiteBroker(db, clock=clock)
    try:
        job = env()
        b.enqueue([job])
        [d] = b.fetch(["default"], "w", 1, 5.0, 0.0)
        b.finish([Finish(d, JobStatus.SUCCEEDED, b"r", result_ttl=10.0)])
        b.kv.set("k", b"v", ttl=10.0)
        clock.advance(60)
        assert b.get([job.id]) == [None]
        b.fetch(["default"], "w", 1, 5.0, 0.0)  # a fetch sweeps now and then
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM kv").fetchone() == (0,)
    finally:
        b.close()


def _rows_per_transaction(broker: SQLiteBroker, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each write transaction of ``broker`` changes from now on, in order."""
    changed: list[int] = []
    write = broker._db.write

    @contextmanager
    def counted() -> Iterator[sqlite3.Connection]:
        with write() as conn:
            before = conn.total_changes
            yield conn
            changed.append(conn.total_changes - before)

    monkeypatch.setattr(broker._db, "write", counted)
    return changed


def _count(db: str, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_a_backlog_of_expired_rows_is_swept_a_bounded_batch_per_transaction(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sweep deleted every expired row in one statement inside the claim's transaction: a
    # million of them held the write lock for seconds, and a producer's enqueue gave up.
    clock = FakeClock()
    b = SQLiteBroker(db, clock=clock)
    try:
        rows, per_sweep = sqlite_sql.SWEEP_ROWS, sqlite_core._SWEEP_BATCHES
        backlog = 2 * per_sweep * rows + rows // 2  # two full sweeps, and half a batch
        with sqlite3.connect(db) as conn:  # records that expired while no worker ran
            conn.executemany(
                "INSERT INTO jobs(id, queue, payload, status, seq, updated_at, expires_at, "
                "result) VALUES (?, 'default', x'00', 'succeeded', 0, 0, ?, x'00')",
                ((f"old-{i}", clock.time() - 1) for i in range(backlog)),
            )
        b.kv.set("k", b"v", ttl=1.0)
        clock.advance(2)
        jobs = [env() for _ in range(3)]
        b.enqueue(jobs)
        changed = _rows_per_transaction(b, monkeypatch)

        left = []
        for job in jobs:
            assert [d.id for d in b.fetch(["default"], "w", 1, 60.0, 0.0)] == [job.id]
            left.append((_count(db, "jobs") - len(jobs), _count(db, "kv")))
            clock.advance(sqlite_core._SWEEP_AGAIN)  # the rest waits for the next sweep
        assert left == [(backlog - per_sweep * rows, 1), (rows // 2, 1), (0, 0)]
        assert max(changed) == rows  # no transaction deleted more than a batch
        assert changed.count(rows) == 2 * per_sweep
    finally:
        b.close()


def test_the_event_log_is_trimmed_a_bounded_batch_per_append(
    db: str, broker: SQLiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = sqlite_sql.TRIM_ROWS
    backlog = 2 * rows + 500  # two appends trim a batch each, the third what is left
    with sqlite3.connect(db) as conn:  # a long log kept under a larger events_kept
        conn.executemany(
            "INSERT INTO events(id, body) VALUES (?, ?)",
            ((i, b"%d:e%d" % (len(str(i)) + 1, i)) for i in range(1, backlog + 1)),
        )
        conn.execute("UPDATE meta SET value = ? WHERE name = 'events'", (backlog,))
    broker.events_kept = 10
    changed = _rows_per_transaction(broker, monkeypatch)
    sizes = []
    for n in range(3):
        broker.publish([b"new %d" % n])
        sizes.append(_count(db, "events"))
    assert sizes == [backlog + 1 - rows, backlog + 2 - 2 * rows, 10]
    assert max(changed) <= rows + 2  # the trim, the appended row and the counter
    assert [e for _, e in broker.read_events(None, 0.0, 100)][-3:] == [b"new 0", b"new 1", b"new 2"]


def test_every_connection_limits_the_wal_and_a_burst_is_cut_back_after_a_checkpoint(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The -wal grew to many times the database under contention, and stayed so while any
    # process had the file open.
    limit = 256 * 1024
    monkeypatch.setattr(sqlite_database, "WAL_LIMIT", limit)
    b = SQLiteBroker(db)
    reader = sqlite3.connect(db, isolation_level=None)
    try:

        def read_limit() -> None:
            with b._db.read() as conn:
                limits.append(conn.execute("PRAGMA journal_size_limit").fetchone()[0])

        limits: list[int] = []
        read_limit()
        other = threading.Thread(target=read_limit)  # another thread, its own connection
        other.start()
        other.join()
        assert limits == [limit, limit]

        reader.execute("BEGIN")  # a read that keeps every checkpoint from finishing
        reader.execute("SELECT count(*) FROM jobs").fetchone()
        for _ in range(20):
            b.enqueue(
                [Envelope(id=new_job_id(), queue="default", payload=b"x" * 2000) for _ in range(50)]
            )
        reader.execute("COMMIT")
        assert os.path.getsize(db + "-wal") > 4 * limit
        reader.execute("PRAGMA wal_checkpoint(PASSIVE)")
        b.enqueue([env()])  # the first write after a complete checkpoint starts the -wal over
        assert os.path.getsize(db + "-wal") <= limit
        assert _count(db, "jobs") == 20 * 50 + 1
    finally:
        reader.close()
        b.close()


# -- several processes on one file -----------------------------------------------------------

_CONSUMER = """
import json, sys, time
from conveyor.brokers import Finish
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor._message import JobStatus
b = SQLiteBroker(sys.argv[1])
print("ready", flush=True)
got = []
while True:
    batch = b.fetch(["default"], sys.argv[2], 7, 60.0, 0.2)
    if not batch and b.kv.get("stop"):
        break
    got += [d.id for d in batch]
    assert b.finish([Finish(d, JobStatus.SUCCEEDED, b"ok") for d in batch]) == [True] * len(batch)
print(json.dumps(got), flush=True)
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


def _last_line(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return out.strip().splitlines()[-1]


def test_processes_fetching_one_file_get_every_job_exactly_once(
    db: str, broker: SQLiteBroker
) -> None:
    procs = [_python(_CONSUMER, db, f"consumer-{n}") for n in range(4)]
    for p in procs:
        _ready(p)
    jobs = [env() for _ in range(500)]
    for i in range(0, len(jobs), 50):  # while they are fetching, to make them race
        broker.enqueue(jobs[i : i + 50])
    for job in jobs:
        record = broker.wait(job.id, 20.0)
        assert record is not None
        assert record.status is JobStatus.SUCCEEDED
    broker.kv.set("stop", b"1")
    per_process = [json.loads(_last_line(p)) for p in procs]
    assert sum(1 for got in per_process if got) >= 2, "the processes did not race"
    times = Counter(i for got in per_process for i in got)
    assert set(times) == {j.id for j in jobs}
    assert set(times.values()) == {1}


_WAITER = f"""
import sys, time
from conveyor.brokers.sqlite import _core
from conveyor.brokers.sqlite import SQLiteBroker
_core._SAFETY_NET = {STRETCHED_NET}
b = SQLiteBroker(sys.argv[1])
print("ready", flush=True)
if sys.argv[2] == "wait":
    record = b.wait(sys.argv[3], {STRETCHED_NET})
    print(time.time(), record.status if record else None, flush=True)
else:
    got = b.fetch(["default"], "c", 1, 60.0, {STRETCHED_NET})
    print(time.time(), got[0].id if got else None, flush=True)
"""


def test_wait_wakes_promptly_when_another_process_finishes(db: str, broker: SQLiteBroker) -> None:
    job = env()
    broker.enqueue([job])
    [d] = broker.fetch(["default"], "c", 1, 60.0, 0.0)
    proc = _python(_WAITER, db, "wait", job.id)
    _ready(proc)
    time.sleep(0.15)  # it is blocked in wait by now
    finished_at = time.time()
    assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r")]) == [True]
    returned_at, status = _last_line(proc).split()
    assert status == "succeeded"
    assert float(returned_at) - finished_at < PROMPT


def test_blocked_fetch_wakes_promptly_when_another_process_enqueues(
    db: str, broker: SQLiteBroker
) -> None:
    proc = _python(_WAITER, db, "fetch")
    _ready(proc)
    time.sleep(0.15)
    job = env()
    enqueued_at = time.time()
    broker.enqueue([job])
    returned_at, job_id = _last_line(proc).split()
    assert job_id == job.id
    assert float(returned_at) - enqueued_at < PROMPT


_UPDATER = """
import sys, threading
from conveyor.brokers.sqlite import SQLiteBroker
b = SQLiteBroker(sys.argv[1])
print("ready", flush=True)
def work():
    for _ in range(50):
        b.kv.update("n", lambda old: str(int(old or b"0") + 1).encode())
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("done", flush=True)
"""


def test_kv_update_loses_nothing_under_threads_and_processes(broker: SQLiteBroker) -> None:
    proc = _python(_UPDATER, broker.path)
    _ready(proc)  # it is incrementing now: race it

    def work() -> None:
        for _ in range(50):
            broker.kv.update("n", lambda old: str(int(old or b"0") + 1).encode())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _last_line(proc) == "done"
    assert broker.kv.get("n") == b"600"  # 8 threads here and 4 there, 50 each


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connections(broker: SQLiteBroker) -> None:
    broker.enqueue([env()])  # the parent has a connection open
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        ok = False
        try:
            ok = len(broker.fetch(["default"], "child", 1, 60.0, 0.0)) == 1
            broker.enqueue([env()])
        finally:
            os._exit(0 if ok else 1)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0
    assert [s.queued for s in broker.stats()] == [1]


def test_sockets_left_by_dead_waiters_are_removed(broker: SQLiteBroker) -> None:
    notify = Path(broker.path + ".notify")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(f"{broker._notify._base}/f.deadbeef0000")  # short enough for a socket path
    dead.close()  # a process killed in fetch leaves its socket file behind
    assert (notify / "f.deadbeef0000").exists()
    broker.enqueue([env()])
    assert not (notify / "f.deadbeef0000").exists()


def test_connections_of_finished_threads_are_closed(broker: SQLiteBroker) -> None:
    for _ in range(20):  # e.g. a job's own thread reporting progress, then gone
        t = threading.Thread(target=lambda: broker.get(["x"]))
        t.start()
        t.join()
    assert len(broker._db._procs.opened) <= 2  # this thread's, and the last one's


def test_a_purge_wakes_the_waiters_of_the_purged_jobs(
    broker: SQLiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_core, "_SAFETY_NET", STRETCHED_NET)
    job = env()
    broker.enqueue([job])
    caught: list[BaseException] = []

    def wait() -> None:
        try:
            broker.wait(job.id, STRETCHED_NET)
        except JobNotFound as exc:
            caught.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    purged_at = time.monotonic()
    assert broker.purge("default") == 1
    waiter.join(30)
    assert time.monotonic() - purged_at < PROMPT
    assert len(caught) == 1


def _open_together(path: str, openers: int) -> list[BaseException]:
    barrier = threading.Barrier(openers)
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            SQLiteBroker(path).close()
        except BaseException as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_several_openers_of_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Switching a fresh file to WAL clashes between openers; each must wait its turn."""
    for run in range(30):
        assert _open_together(str(tmp_path / f"race{run}.db"), 4) == []
