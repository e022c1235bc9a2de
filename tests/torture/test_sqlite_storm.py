"""SQLite under a busy-lock storm: several ``conveyor worker`` processes and two producer
processes on one file with short leases, a process that keeps taking the write lock, a
reader holding a long read transaction, and one worker SIGKILLed mid-run (then restarted).

Every acknowledged job completes (lost = 0, nothing completed twice; reruns, from the killed
worker's leases and from leases that lapse while the write lock is starved, stay under a
tenth of the jobs), and ``PRAGMA integrity_check`` says ok.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.testing.checker import check

from .workers import Cluster, wait_for

pytestmark = pytest.mark.slow

PRODUCERS, PER_PRODUCER, BATCH = 2, 150, 10
WORKERS, CONCURRENCY = 3, 4

PRODUCER = """
import sys
from conveyor import Conveyor, Signature

url, name, n, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
app = Conveyor(url)
with open(out, "a") as f:
    for start in range(0, n, batch):
        tags = [f"{name}-{i}" for i in range(start, min(n, start + batch))]
        jobs = app.enqueue_many(
            [Signature(app, "torture_app:sleepy", (t, 0.02), {}, app.defaults) for t in tags])
        for t, j in zip(tags, jobs):  # written only once the broker said "stored"
            f.write(f"{t} {j.id}\\n")
        f.flush()
app.close()
"""

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    db.execute("BEGIN IMMEDIATE")  # the write lock, held while everyone else waits
    time.sleep(0.15)
    db.execute("COMMIT")
    time.sleep(0.05)
"""

READER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN")
tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
for t in tables:  # a snapshot on every table, held for the whole storm
    db.execute(f'SELECT count(*) FROM "{t}"').fetchone()
print("reading", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "app")
    try:
        yield c
    finally:
        c.cleanup()


def _script(cluster: Cluster, source: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        cwd=cluster.root,
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.timeout(90)
def test_a_busy_lock_storm_with_a_worker_killed_loses_nothing_and_corrupts_nothing(
    cluster: Cluster,
) -> None:
    db = str(cluster.root / "jobs.db")
    app = cluster.app()  # creates the schema before anyone else opens the file
    workers = [
        cluster.worker(f"w{i}", "--lease", "1", "-c", str(CONCURRENCY)) for i in range(WORKERS)
    ]
    reader = _script(cluster, READER, db, "8")
    assert reader.stdout is not None and reader.stdout.readline() == b"reading\n"
    locker = _script(cluster, LOCKER, db, "6")
    acked = cluster.root / "acked.txt"
    producers = [
        _script(cluster, PRODUCER, cluster.url, f"p{k}", str(PER_PRODUCER), str(BATCH), str(acked))
        for k in range(PRODUCERS)
    ]

    victim = workers[0]
    wait_for(lambda: any(n == victim.name for _, _, n, _ in cluster.runs()), 30, cluster.outputs)
    time.sleep(0.5)
    victim.signal(signal.SIGKILL)  # mid-run: it holds up to CONCURRENCY leases
    victim.wait(10)
    cluster.worker("w-restarted", "--lease", "1", "-c", str(CONCURRENCY))

    for p in [*producers, locker, reader]:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out.decode(errors="replace")
    lines = [line.split() for line in acked.read_text().splitlines()]
    assert len(lines) == PRODUCERS * PER_PRODUCER
    deadline = time.monotonic() + 60
    completed = []
    for tag, job_id in lines:
        app.job(job_id).result(timeout=max(1.0, deadline - time.monotonic()))
        completed.append(tag)

    report = check(
        acknowledged=[t for t, _ in lines], executed=cluster.executed(), completed=completed
    )
    print(report)
    # Reruns come from the killed worker's leases (up to CONCURRENCY) and from leases that
    # lapse while a worker waits over a second for the write lock the locker keeps taking
    # (SQLite's busy handler is not fair): at-least-once allows both, a tenth of the jobs
    # bounds them here; nothing may be lost or completed twice whatever the storm.
    report.assert_ok(max_duplicates=CONCURRENCY + len(lines) // 10)
    assert all(w.alive() for w in cluster.workers[1:]), cluster.outputs()
    app.close()
    for w in cluster.workers[1:]:
        w.signal(signal.SIGTERM)
        assert w.wait(15) == 0, w.output()
    with sqlite3.connect(db) as check_db:
        assert check_db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
