"""Helpers to run ``conveyor worker`` as real subprocesses, on SQLite, Redis and PostgreSQL.

``project`` writes a small tasks module (``jobs_app``) into a fresh folder; its tasks append
one line per start and end to ``runs.log`` so a test can count how often a job really ran.
It is parametrized over the brokers worker processes can share (``tests/brokers.py``):
``sqlite`` is a file in ``tmp_path``; ``redis`` is the session's private ``redis-server``
(``tests/redis_server.py``, never the shared one on 6379) with a key prefix of the test's
own, which the worker subprocess gets through ``JOBS_PREFIX`` (read by ``jobs_app``), so
tests never see each other's keys; ``postgres`` a schema of the test's own in the session's
database (``tests/postgres_server.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from brokers import by_name, params

TASKS = """
import os, pathlib, time
from conveyor import Conveyor

app = Conveyor(prefix=os.environ["JOBS_PREFIX"])  # and CONVEYOR_URL, set by the test
LOG = pathlib.Path(__file__).with_name("runs.log")


def mark(event, tag):
    with open(LOG, "a") as f:  # one short append per line: lines never interleave
        f.write(f"{event} {tag} {os.getpid()}\\n")


@app.task
def slow(tag: str, seconds: float) -> str:
    mark("start", tag)
    time.sleep(seconds)
    mark("end", tag)
    return tag


@app.task
def double(x: int) -> int:
    return x * 2
"""


class WorkerProcess:
    """One ``conveyor worker`` subprocess; its output goes to a file, not a pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(lambda: "conveyor worker" in self.output(), timeout, self.output)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


class CommandProcess:
    """One long-running ``conveyor COMMAND ARGS`` subprocess (``events``, ``exporter``) in
    ``root``; its stdout and stderr go to files there, not pipes."""

    def __init__(self, root: Path, env: dict[str, str], command: str, *args: str) -> None:
        self.out = root / f"{command}-{len(list(root.glob(f'{command}-*.out')))}.out"
        self.err = self.out.with_suffix(".err")
        cmd = [sys.executable, "-m", "conveyor", command, *args]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def stop(self) -> int:
        """SIGTERM, as a supervisor stops it; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Project:
    """A folder with ``jobs_app.py`` and its workers, on ``url`` (SQLite in the folder if
    not given) under the key ``prefix`` (only Redis uses it)."""

    def __init__(
        self, root: Path, url: str | None = None, prefix: str = "conveyor", store: str | None = None
    ) -> None:
        self.root = root
        self.url = url or f"sqlite:///{root / 'jobs.db'}"
        self.prefix = prefix
        self.store = store  # the record store of an amqp:// broker
        self.runs_log = root / "runs.log"
        self.workers: list[WorkerProcess] = []
        self.apps: list[Conveyor] = []
        (root / "jobs_app.py").write_text(textwrap.dedent(TASKS))

    def env(self) -> dict[str, str]:
        env = dict(
            os.environ, CONVEYOR_URL=self.url, JOBS_PREFIX=self.prefix, PYTHONPATH=str(self.root)
        )
        env.pop("PYTHONWARNINGS", None)
        if self.store:
            env["CONVEYOR_STORE_URL"] = self.store
        return env

    def app(self) -> Conveyor:
        """A producer on the project's broker (this process never imports ``jobs_app``),
        closed with the project."""
        app = Conveyor(self.url, prefix=self.prefix, store=self.store)
        self.apps.append(app)
        return app

    def worker(self, *args: str, ready: bool = True, module: str = "jobs_app") -> WorkerProcess:
        """Start ``conveyor worker MODULE ARGS`` with the project folder as cwd."""
        log = self.root / f"worker-{len(self.workers)}.log"
        cmd = [sys.executable, "-m", "conveyor", "worker", module, *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=self.root, env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        worker = WorkerProcess(proc, log)
        self.workers.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    def runs(self) -> list[tuple[str, str, int]]:
        """(event, tag, pid) per line of the runs log."""
        if not self.runs_log.exists():
            return []
        lines = self.runs_log.read_text().splitlines()
        return [(e, t, int(p)) for e, t, p in (line.split() for line in lines)]

    def started(self, tag: str) -> list[int]:
        return [pid for event, t, pid in self.runs() if event == "start" and t == tag]

    def cleanup(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGKILL)
                w.proc.wait(10)
        # An app left open keeps its connections: a RabbitMQ one retries every second, and
        # says so, once the session's virtual host is deleted.
        for app in self.apps:
            app.close()


def conveyor(
    project: Project, *args: str, code: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``conveyor ARGS`` in the project folder (output at 80 columns, no input: as from
    a script); check its exit code."""
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=project.root,
        env={**project.env(), "COLUMNS": "80", **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return result


def children_of(pid: int) -> set[int]:
    """The pids of the live processes whose parent is ``pid`` (read from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent's pid, after the state
            found.add(int(stat.parent.name))
    return found


def wait_for(
    condition: Callable[[], bool], timeout: float, describe: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s\n{describe()}")
        time.sleep(0.05)


@pytest.fixture(params=params(shared=True, integration=True))
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The name of each broker worker processes can share (``tests/brokers.py``)."""
    kind: str = request.param.name
    return kind


@pytest.fixture
def project(tmp_path: Path, broker_kind: str, request: pytest.FixtureRequest) -> Iterator[Project]:
    """A project on each broker in turn (a server starts only if a test needs it)."""
    target = by_name(broker_kind).target(request, tmp_path)
    p = Project(tmp_path, target.url, target.prefix, target.store)
    try:
        yield p
    finally:
        p.cleanup()
