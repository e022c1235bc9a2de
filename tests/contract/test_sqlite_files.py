"""The SQLite database's files: made private whatever the umask, existing ones left as they
are, missing folders made, nothing made by a process that only reads; and a database file
deleted or replaced under an open broker refused with ``BrokerGone`` instead of written to
where nobody looks."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import BrokerGone, ConfigurationError, Conveyor
from conveyor._message import Envelope, new_job_id
from conveyor.brokers import open_broker
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.brokers.sqlite import _file as _sqlite_file


def env() -> Envelope:
    return Envelope(id=new_job_id(), queue="default", payload=b"p")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=["umask000", "umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.fixture
def look_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are looked at on every call, not once a second: tests need not sleep."""
    monkeypatch.setattr(_sqlite_file, "CHECK_EVERY", 0.0)


# -- modes -----------------------------------------------------------------------------------


def test_what_conveyor_creates_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "new" / "deeper" / "jobs.db"
    b = SQLiteBroker(str(db))
    try:
        b.enqueue([env()])
        notify = Path(str(db) + ".notify")
        with b._notify.listen("f."):
            [sock] = notify.iterdir()
            assert stat.S_ISSOCK(sock.stat().st_mode)
            assert mode(sock) == 0o600
        assert mode(tmp_path / "new") == 0o700
        assert mode(tmp_path / "new" / "deeper") == 0o700
        assert mode(notify) == 0o700
        for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):
            assert mode(db.parent / name) == 0o600, name
        assert sorted(p.name for p in db.parent.iterdir()) == [
            "jobs.db",
            "jobs.db-shm",
            "jobs.db-wal",
            "jobs.db.notify",  # and no file left over from making the database
        ]
    finally:
        b.close()


def test_a_folder_that_exists_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    tmp_path.chmod(0o755)
    SQLiteBroker(str(tmp_path / "jobs.db")).close()
    assert mode(tmp_path) == 0o755


@pytest.mark.parametrize(
    ("file_mode", "folder_mode", "socket_mode"),
    [(0o600, 0o700, 0o600), (0o640, 0o700, 0o600), (0o660, 0o770, 0o660)],
)
def test_an_existing_database_keeps_its_mode_and_its_group_can_wake_workers(
    tmp_path: Path, umask: int, file_mode: int, folder_mode: int, socket_mode: int
) -> None:
    """A database shared with a group on purpose stays shared: SQLite gives its -wal and
    -shm the same mode, and the wake-up folder lets the group in only if it may write."""
    db = tmp_path / "jobs.db"
    SQLiteBroker(str(db)).close()
    shutil.rmtree(str(db) + ".notify")
    db.chmod(file_mode)
    b = SQLiteBroker(str(db))
    try:
        b.enqueue([env()])
        with b._notify.listen("f."):
            [sock] = Path(str(db) + ".notify").iterdir()
            assert mode(sock) == socket_mode
        assert mode(db) == file_mode
        assert mode(Path(str(db) + ".notify")) == folder_mode
    finally:
        b.close()


def test_a_world_readable_database_is_kept_but_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.db"
    SQLiteBroker(str(db)).close()
    db.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="conveyor.sqlite"):
        SQLiteBroker(str(db)).close()
    assert mode(db) == 0o644
    [record] = caplog.records
    assert f"{db} is readable by every user" in record.getMessage()
    assert f"chmod 600 {db}" in record.getMessage()

    caplog.clear()
    db.chmod(0o640)  # its group, on purpose: no warning
    with caplog.at_level(logging.WARNING, logger="conveyor.sqlite"):
        SQLiteBroker(str(db)).close()
    assert caplog.records == []


def test_processes_making_one_new_database_at_once_share_it(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "jobs.db"
    errors: list[BaseException] = []
    brokers: list[SQLiteBroker] = []

    def open_one() -> None:
        try:
            brokers.append(SQLiteBroker(str(db)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        ids = brokers[0].enqueue([env()])
        assert all(b.get(ids)[0] is not None for b in brokers)
        assert mode(db) == 0o600
        assert not [p for p in db.parent.iterdir() if p.name.endswith(".new")]
    finally:
        for b in brokers:
            b.close()


# -- opening an existing database only -----------------------------------------------------


def test_create_false_on_a_missing_file_names_it_and_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/jobs.db"
    with pytest.raises(ConfigurationError) as caught:
        open_broker(url, create=False)
    message = str(caught.value)
    assert f"no SQLite database at {tmp_path}/no/such/jobs.db; nothing was created" in message
    assert "Point the URL (--url or CONVEYOR_URL) at the database" in message
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(ConfigurationError, match="no SQLite database at"):
        Conveyor(url).open(create=False)
    assert list(tmp_path.iterdir()) == []


def test_create_false_explains_where_a_relative_path_is_read_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        open_broker("sqlite:///./conveyor.db", create=False)
    where = f"a relative sqlite:///./conveyor.db is read from the current folder, {tmp_path}"
    assert where in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["empty", "other tables"])
def test_create_false_refuses_a_file_without_conveyor_tables_and_changes_nothing(
    tmp_path: Path, content: str
) -> None:
    db = tmp_path / "other.db"
    if content == "empty":
        db.touch()
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        conn.close()
    before = db.read_bytes()
    with pytest.raises(ConfigurationError, match=r"no Conveyor tables in the SQLite file .*other"):
        open_broker(f"sqlite:///{db}", create=False)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_create_false_opens_an_existing_database_and_makes_no_wake_up_folder(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    writer = SQLiteBroker(str(db))
    ids = writer.enqueue([env()])
    writer.close()
    shutil.rmtree(str(db) + ".notify")

    app = Conveyor(f"sqlite:///{db}")
    broker = app.open(create=False)
    try:
        assert app.broker is broker
        assert [s.queued for s in broker.stats()] == [1]
        assert broker.get(ids)[0] is not None
        assert not Path(str(db) + ".notify").exists()
    finally:
        app.close()


def test_a_writer_makes_the_missing_folders_of_its_url(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/.conveyor-demo/demo.db")
    try:
        app.broker.enqueue([env()])
    finally:
        app.close()
    assert mode(tmp_path / ".conveyor-demo") == 0o700
    assert (tmp_path / ".conveyor-demo" / "demo.db").is_file()


# -- the file deleted or replaced under an open broker -----------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def broker(db: Path) -> Iterator[SQLiteBroker]:
    b = SQLiteBroker(str(db))
    yield b
    b.close()


def _other_database(tmp_path: Path) -> Path:
    other = tmp_path / "elsewhere" / "other.db"
    b = SQLiteBroker(str(other))
    b.enqueue([env()])
    b.close()
    return other


def _every_call_refuses(b: SQLiteBroker, match: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: b.enqueue([env()]),
        lambda: b.fetch(["default"], "w", 1, 30.0, 0.0),
        b.stats,
        lambda: b.get(["x"]),
        lambda: b.kv.set("k", b"v", None),
        lambda: b.kv.get("k"),
    ]
    for call in calls:
        with pytest.raises(BrokerGone, match=match):
            call()


@pytest.mark.usefixtures("look_every_call")
def test_a_deleted_database_is_refused_not_written_into_the_void(
    db: Path, broker: SQLiteBroker
) -> None:
    broker.enqueue([env()])
    db.unlink()
    with pytest.raises(BrokerGone) as caught:
        broker.enqueue([env()])
    message = str(caught.value)
    assert f"the SQLite database {db} was deleted or moved away" in message
    assert "Restart the process" in message
    _every_call_refuses(broker, "was deleted")
    assert not db.exists()  # nothing made a new, empty file at the path


@pytest.mark.usefixtures("look_every_call")
def test_a_database_replaced_by_another_is_refused(
    tmp_path: Path, db: Path, broker: SQLiteBroker
) -> None:
    broker.enqueue([env()])
    os.replace(_other_database(tmp_path), db)  # mv other.db jobs.db
    with pytest.raises(BrokerGone, match=f"the SQLite database {db} was replaced by another"):
        broker.stats()
    _every_call_refuses(broker, "replaced by another file")
    fresh = SQLiteBroker(str(db))  # a new process uses the file now at the path
    try:
        assert [s.queued for s in fresh.stats()] == [1]
    finally:
        fresh.close()


@pytest.mark.usefixtures("look_every_call")
def test_rm_of_every_file_then_a_new_database_is_seen_as_a_replacement(
    db: Path, broker: SQLiteBroker
) -> None:
    broker.enqueue([env()])
    for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):  # rm jobs.db*
        (db.parent / name).unlink()
    SQLiteBroker(str(db)).close()  # another process starts afresh on the path
    _every_call_refuses(broker, "replaced by another file")


@pytest.mark.usefixtures("look_every_call")
@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_deleted_wal_or_shm_is_refused(db: Path, broker: SQLiteBroker, suffix: str) -> None:
    broker.enqueue([env()])
    Path(str(db) + suffix).unlink()
    with pytest.raises(BrokerGone, match=rf"the SQLite file {db}{suffix} was deleted"):
        broker.enqueue([env()])


@pytest.mark.usefixtures("look_every_call")
def test_through_a_symbolic_link_the_wal_watched_is_the_one_sqlite_uses(tmp_path: Path) -> None:
    real = tmp_path / "data" / "real.db"
    SQLiteBroker(str(real)).close()
    link = tmp_path / "jobs.db"
    link.symlink_to(real)
    b = SQLiteBroker(str(link))
    try:
        b.enqueue([env()])
        assert Path(f"{real}-wal").exists()  # SQLite follows the link
        Path(f"{real}-wal").unlink()
        with pytest.raises(BrokerGone, match=rf"the SQLite file {real}-wal was deleted"):
            b.stats()
    finally:
        b.close()


@pytest.mark.usefixtures("look_every_call")
def test_a_closed_broker_does_not_mistake_sqlite_removing_its_wal(db: Path) -> None:
    """SQLite removes the -wal and -shm when the last connection closes: a broker opened
    again after that is not "gone"."""
    b = SQLiteBroker(str(db))
    b.enqueue([env()])
    b.close()
    assert not Path(str(db) + "-wal").exists()
    assert [s.queued for s in b.stats()] == [1]
    b.close()


def test_a_new_thread_does_not_open_a_fresh_file_where_the_old_one_was(
    db: Path, broker: SQLiteBroker
) -> None:
    """Every connection is checked as it opens, whatever the time since the last look."""
    broker.enqueue([env()])
    db.unlink()
    errors: list[BaseException] = []

    def use() -> None:
        try:
            broker.stats()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join(10)
    assert [type(e) for e in errors] == [BrokerGone]
    assert not db.exists()


def test_the_files_are_looked_at_once_a_second_not_on_every_call(
    broker: SQLiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks: list[str] = []
    real = _sqlite_file._identity

    def counted(path: str) -> tuple[int, int] | None:
        looks.append(path)
        return real(path)

    monkeypatch.setattr(_sqlite_file, "_identity", counted)
    for _ in range(200):
        broker.enqueue([env()])
        broker.stats()
    assert len(looks) <= 3 * 2  # three files, at most twice in the second or so this takes
    watch = broker._db._watch
    watch._next = 0.0  # the second is up
    broker.stats()
    assert len(looks) >= 3


# -- what a process whose file is gone leaves behind --------------------------------------


def _queued(path: Path) -> list[int]:
    b = SQLiteBroker(str(path))
    try:
        return [s.queued for s in b.stats()]
    finally:
        b.close()


@pytest.mark.usefixtures("look_every_call")
def test_the_old_wal_is_taken_off_the_path_so_the_new_file_reads_whole(
    tmp_path: Path, db: Path, broker: SQLiteBroker
) -> None:
    """Left at the path, the old -wal and -shm would be read into the file moved there."""
    broker.enqueue([env(), env()])
    os.replace(_other_database(tmp_path), db)  # one job, all in the file (its WAL is gone)
    with pytest.raises(BrokerGone):
        broker.stats()
    assert not Path(f"{db}-wal").exists()
    assert not Path(f"{db}-shm").exists()
    assert _queued(db) == [1]


@pytest.mark.usefixtures("look_every_call")
def test_a_database_moved_away_keeps_the_commits_its_wal_held(
    db: Path, broker: SQLiteBroker
) -> None:
    broker.enqueue([env() for _ in range(5)])  # a few pages: in the WAL, not in the file
    moved = db.with_name("moved.db")
    os.rename(db, moved)  # mv jobs.db moved.db
    with pytest.raises(BrokerGone, match="deleted or moved away"):
        broker.enqueue([env()])
    assert _queued(moved) == [5]


def test_closing_a_broker_whose_file_is_gone_leaves_the_new_database_alone(
    db: Path, broker: SQLiteBroker
) -> None:
    """Closing tidies up what was its own only: the new database's -wal and -shm stay."""
    for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):  # rm jobs.db*
        (db.parent / name).unlink()
    fresh = SQLiteBroker(str(db))
    try:
        ids = fresh.enqueue([env()])  # in the new database's WAL
        broker.close()
        assert Path(f"{db}-wal").exists()
        assert fresh.get(ids)[0] is not None
        assert _queued(db) == [1]
    finally:
        fresh.close()


def test_closing_a_broker_tidies_up_after_a_file_replaced_since_its_last_call(
    tmp_path: Path, db: Path, broker: SQLiteBroker
) -> None:
    broker.enqueue([env()])
    os.replace(_other_database(tmp_path), db)
    broker.close()  # within the second: no call looked at the files yet
    assert not Path(f"{db}-wal").exists()
    assert _queued(db) == [1]


def test_a_wal_left_by_a_deleted_database_is_not_read_into_a_new_one(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a process that died holding a deleted database leaves: its -wal and -shm."""
    old = SQLiteBroker(str(db))
    old.enqueue([env() for _ in range(5)])
    db.unlink()
    orphans = {n: Path(f"{db}{n}").read_bytes() for n in ("-wal", "-shm")}
    old.close()  # finds the file gone: removes what it had open, as it should
    for suffix, content in orphans.items():  # as if it had died instead
        Path(f"{db}{suffix}").write_bytes(content)

    with caplog.at_level(logging.WARNING, logger="conveyor.sqlite"):
        assert _queued(db) == []
    assert f"removed {db}-wal: a database deleted under a process" in caplog.text
    assert f"removed {db}-shm" in caplog.text


def test_openers_that_find_no_database_take_turns_making_it(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two openers find no database at once. The second waits for the first to make it
    (the folder's lock) and then finds it: were it to go on unguarded, it could take the
    first one's new -wal, made in between, for an orphan and remove it ("disk I/O error"
    in the first one's transaction, or its writes lost)."""
    path = str(db)
    real_link = _sqlite_file._link_new
    linking, go_on = threading.Event(), threading.Event()

    def held_link(p: str) -> bool:
        linking.set()
        assert go_on.wait(10)
        return real_link(p)

    made: dict[str, bool] = {}
    monkeypatch.setattr(_sqlite_file, "_link_new", held_link)
    first = threading.Thread(target=lambda: made.update(first=_sqlite_file.create_file(path)))
    first.start()
    assert linking.wait(10)
    monkeypatch.setattr(_sqlite_file, "_link_new", real_link)
    second = threading.Thread(target=lambda: made.update(second=_sqlite_file.create_file(path)))
    second.start()
    try:
        second.join(0.3)
        assert second.is_alive()  # waiting for the first, not making a file of its own
    finally:
        go_on.set()
        first.join(10)
        second.join(10)
    assert made == {"first": True, "second": False}
    assert _queued(db) == []  # a database SQLite opens as any other


def test_a_folder_lock_held_too_long_is_waited_for_then_gone_without(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A child forked while a thread held the folder's lock holds it until it exits: the
    next database there is made after ``CREATE_WAIT``, not never, and the log says why."""
    monkeypatch.setattr(_sqlite_file, "CREATE_WAIT", 0.2)
    held = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as that child's copy would
        with caplog.at_level(logging.WARNING, logger="conveyor.sqlite"):
            assert _sqlite_file.create_file(str(db))
    finally:
        os.close(held)
    assert "stayed locked by another process" in caplog.text
    assert _queued(db) == []
