"""The ground moving under ``conveyor worker`` on SQLite: the database file deleted, replaced
by another or removed with its -wal and -shm while workers and producers have it open; and
the files a worker makes, whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, wait_for
from conveyor import BrokerGone, Conveyor, Job, Signature

pytestmark = pytest.mark.slow

# An idle worker looks each second, a busy one at its 5 s heartbeat; one that did not look
# would go on until its 60 s job ends, or its 30 s grace.
SEEN_WITHIN = 20.0


class Worker:
    """``conveyor worker jobs_app`` with its stderr apart, to read the error it exits with."""

    def __init__(self, project: Project, *args: str, umask: int | None = None) -> None:
        self.out = project.root / "worker.out"
        self.err = project.root / "worker.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", "jobs_app", *args],
                cwd=project.root,
                env=project.env(),
                stdout=out,
                stderr=err,
                umask=-1 if umask is None else umask,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_for(lambda: "conveyor worker" in self.output(), 30, self.output)

    def exits_within(self, seconds: float) -> tuple[int, float]:
        began = time.monotonic()
        try:
            code = self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {seconds} s\n{self.output()}") from None
        return code, time.monotonic() - began

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


Start = Callable[..., Worker]


@pytest.fixture
def start(project: Project) -> Iterator[Start]:
    """Start a worker on the project and wait until it is ready; killed at the end."""
    started: list[Worker] = []

    def start(*args: str, umask: int | None = None) -> Worker:
        worker = Worker(project, *args, umask=umask)
        started.append(worker)
        worker.wait_ready()
        return worker

    try:
        yield start
    finally:
        for w in started:
            w.stop()


def _send(app: Conveyor, task: str, *args: object) -> Job[Any]:
    sig: Signature[Any] = Signature(app, f"jobs_app:{task}", args, {}, app.defaults)
    return app.enqueue_many([sig])[0]


def _other_database(root: Path) -> Path:
    other = root / "elsewhere" / "other.db"
    with Conveyor(f"sqlite:///{other}") as app:
        _send(app, "double", 1)
    return other


def _delete(db: Path) -> None:
    db.unlink()


def _rm_all(db: Path) -> None:  # rm jobs.db*
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()


CHANGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "deleted": (_delete, "was deleted or moved away"),
    "rm-star": (_rm_all, "was deleted or moved away"),
    "replaced": (lambda db: os.replace(_other_database(db.parent), db), "was replaced by another"),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_a_worker_exits_1_when_its_database_is_deleted_or_replaced(
    project: Project, start: Start, change: str, busy: bool
) -> None:
    db = project.root / "jobs.db"
    app = project.app()
    # Busy: its one process slot runs a long job, and a process pool buffers nothing, so
    # it fetches nothing: its keeper (heartbeat) must see it.
    pool = ("--pool", "processes") if busy else ()
    worker = start("-c", "1", "--grace", "30", *pool)
    assert _send(app, "double", 21).result(timeout=30) == 42
    if busy:
        _send(app, "slow", "long", 60.0)
        wait_for(lambda: project.started("long") != [], 30, worker.output)

    act, what = CHANGES[change]
    act(db)
    code, took = worker.exits_within(SEEN_WITHIN + 5)

    stderr = worker.err.read_text()
    assert code == 1, worker.output()
    assert f"error: the SQLite database {db} {what}" in stderr, worker.output()
    assert "Traceback" not in stderr
    assert took < SEEN_WITHIN, (took, worker.output())
    if busy:
        assert ("end", "long") not in [(e, t) for e, t, _ in project.runs()]  # not waited for
    app.close()


@pytest.mark.timeout(60)
def test_a_producer_holding_a_deleted_database_is_refused(project: Project, start: Start) -> None:
    db = project.root / "jobs.db"
    app = project.app()
    worker = start()
    assert _send(app, "double", 2).result(timeout=30) == 4

    db.unlink()
    worker.exits_within(SEEN_WITHIN)
    with pytest.raises(BrokerGone, match=f"the SQLite database {db} was deleted"):
        _send(app, "double", 3)
    assert not db.exists()  # nothing was written: no file, not even an empty one
    app.close()


@pytest.mark.timeout(60)
def test_waiting_for_a_result_in_a_deleted_database_raises_instead_of_hanging(
    project: Project, tmp_path: Path
) -> None:
    """No worker will ever finish a job of a deleted database: the wait says so."""
    app = project.app()
    job = _send(app, "double", 5)
    (project.root / "jobs.db").unlink()
    began = time.monotonic()
    with pytest.raises(BrokerGone, match="was deleted"):
        job.result(timeout=30)
    assert time.monotonic() - began < 15  # it did not wait out its 30 s
    app.close()


@pytest.mark.timeout(60)
def test_a_replaced_database_is_served_by_a_restarted_worker(
    project: Project, start: Start
) -> None:
    """What the error says to do works: the worker restarted serves the file now there."""
    db = project.root / "jobs.db"
    first = start()
    os.replace(_other_database(project.root), db)
    assert first.exits_within(SEEN_WITHIN)[0] == 1

    app = project.app()
    assert [s.queued for s in app.broker.stats()] == [1]  # the other database's job
    second = start()
    assert _send(app, "double", 8).result(timeout=30) == 16
    wait_for(lambda: app.broker.stats()[0].queued == 0, 30, second.output)
    app.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask000", "umask022"])
def test_a_worker_makes_its_missing_folder_and_keeps_every_file_private(
    project: Project, start: Start, umask: int
) -> None:
    folder = project.root / "state" / "queues"
    db = folder / "jobs.db"
    project.url = f"sqlite:///{db}"
    start(umask=umask)
    app = project.app()
    assert _send(app, "double", 4).result(timeout=30) == 8

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(project.root / "state") == 0o700
    assert mode(folder) == 0o700
    assert mode(Path(f"{db}.notify")) == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert mode(Path(f"{db}{suffix}")) == 0o600, suffix
    # Its next fetch binds a socket when it finds nothing, about when the job's result lands.
    deadline = time.monotonic() + 30
    while not (sockets := list(Path(f"{db}.notify").iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sockets, "the idle worker listens for wake-ups"
    assert {mode(s) for s in sockets} == {0o600}
    app.close()


PRODUCER = """
import sys
from conveyor import Conveyor, Signature

app = Conveyor(sys.argv[1])
app.enqueue_many([Signature(app, "jobs_app:double", (1,), {}, app.defaults)])
print("ready", flush=True)
sys.stdin.readline()  # then ends: no other call, no close
"""


@pytest.mark.timeout(60)
def test_a_producer_ending_after_its_database_was_replaced_leaves_no_stale_wal(
    project: Project,
) -> None:
    """It made no call since: its end still takes the old -wal and -shm off the path, which
    SQLite would otherwise pair with the file moved there."""
    db = project.root / "jobs.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, project.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    assert Path(f"{db}-wal").exists()
    other = _other_database(project.root)
    with Conveyor(f"sqlite:///{other}") as app:
        _send(app, "double", 2)  # two jobs there
    os.replace(other, db)
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(30) == 0
    assert not Path(f"{db}-wal").exists()
    with Conveyor(project.url) as app:
        assert [s.queued for s in app.broker.stats()] == [2]


READ_ONLY_FOR_A_WHILE = """
import os, sys
from conveyor import BrokerError, Conveyor

db = sys.argv[1]
app = Conveyor(f"sqlite:///{db}")
t = app.task(name="t")(lambda: None)
t.delay()  # the file made, writable
app.close()
os.chmod(db, 0o444)
try:
    t.delay()
    print("written while read-only")
except BrokerError as exc:
    print("refused:", exc)
for name in (db, db + "-wal", db + "-shm"):  # as the error says (SQLite made them 0444)
    if os.path.exists(name):
        os.chmod(name, 0o600)
t.delay()
print("written again")
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
    reason="needs root's setpriv to run without the capability that ignores file modes",
)
def test_a_database_writable_again_is_written_again(tmp_path: Path) -> None:
    # SQLite opened the 0444 file read-only, and the connection stayed so: a worker started
    # then never wrote again (its warnings told to make writable a file that was).
    script = tmp_path / "readonly.py"
    script.write_text(READ_ONLY_FOR_A_WHILE)
    done = subprocess.run(
        ["/usr/bin/setpriv", "--bounding-set", "-dac_override,-dac_read_search",
         sys.executable, str(script), str(tmp_path / "jobs.db")],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refused: cannot write the SQLite database" in done.stdout
    assert done.stdout.rstrip().endswith("written again")
