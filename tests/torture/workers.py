"""``conveyor worker`` subprocesses for the torture suite, on SQLite or a private Redis.

``Cluster`` writes a tasks module (``torture_app``) into a fresh folder and starts workers on
it. Every task appends ``start|end TAG NAME PID`` to ``runs.log`` (one short append per
line, so lines never interleave), where NAME is the worker's ``--name`` given through
``TORTURE_WORKER`` and TAG identifies the job: the checker counts runs from that log, i.e.
from what really ran, not from what the broker says. Tasks return the worker's NAME, so a
job's recorded result says which worker's completion was accepted. A cluster made with a
``secret`` runs an app with pickle and that signing secret (``TORTURE_SECRET``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conveyor.worker
from conveyor import Conveyor, Job, Signature

TASKS = """
import os, pathlib, time
from conveyor import Conveyor

SECRET = os.environ.get("TORTURE_SECRET")
SIGNED = {"serializer": "pickle", "secret": SECRET} if SECRET else {}
app = Conveyor(prefix=os.environ["TORTURE_PREFIX"], **SIGNED)  # CONVEYOR_URL: from the test
LOG = pathlib.Path(__file__).with_name("runs.log")
NAME = os.environ.get("TORTURE_WORKER", "?")


def mark(event, tag):
    with open(LOG, "a") as f:
        f.write(f"{event} {tag} {NAME} {os.getpid()}\\n")


@app.task
def sleepy(tag: str, seconds: float) -> str:
    mark("start", tag)
    time.sleep(seconds)
    mark("end", tag)
    return NAME


@app.task
def suicide(tag: str) -> str:
    mark("start", tag)
    os.kill(os.getpid(), 9)
    time.sleep(60)
    return NAME
"""


@contextlib.contextmanager
def running(worker: conveyor.worker.Worker, *, graceful: bool = True) -> Iterator[None]:
    """An in-process ``Worker`` running in a thread of its own for the block, stopped after."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop(graceful=graceful)
        thread.join(15)
        assert not thread.is_alive()


def wait_for(
    condition: Callable[[], bool], timeout: float, describe: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s\n{describe()}")
        time.sleep(0.05)


class Worker:
    """One ``conveyor worker`` subprocess; its output goes to a file."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(
            lambda: "conveyor worker" in self.output() or not self.alive(), timeout, self.output
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """To the worker's whole process group (it was started in a session of its own)."""
        os.killpg(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cluster:
    """A folder with ``torture_app.py`` and its workers, on ``url`` (an SQLite file in the
    folder if not given) under the key ``prefix`` (only Redis uses it)."""

    def __init__(
        self,
        root: Path,
        url: str | None = None,
        prefix: str = "conveyor",
        secret: str | None = None,
        store: str | None = None,
    ) -> None:
        self.root = root
        self.url = url or f"sqlite:///{root / 'jobs.db'}"
        self.prefix = prefix
        self.store = store  # the record store of an amqp:// broker
        self.secret = secret
        self.runs_log = root / "runs.log"
        self.workers: list[Worker] = []
        root.mkdir(parents=True, exist_ok=True)
        (root / "torture_app.py").write_text(textwrap.dedent(TASKS))

    def env(self, name: str = "") -> dict[str, str]:
        env = dict(
            os.environ,
            CONVEYOR_URL=self.url,
            TORTURE_PREFIX=self.prefix,
            TORTURE_WORKER=name,
            PYTHONPATH=str(self.root),
        )
        env.pop("PYTHONWARNINGS", None)
        if self.secret is not None:
            env["TORTURE_SECRET"] = self.secret
        if self.store:
            env["CONVEYOR_STORE_URL"] = self.store
        return env

    def app(self) -> Conveyor:
        """A producer on the cluster's broker (this process never imports ``torture_app``)."""
        if self.secret is not None:
            return Conveyor(
                self.url,
                prefix=self.prefix,
                serializer="pickle",
                secret=self.secret,
                store=self.store,
            )
        return Conveyor(self.url, prefix=self.prefix, store=self.store)

    def worker(
        self, name: str, *args: str, ready: bool = True, new_session: bool = False
    ) -> Worker:
        """Start ``conveyor worker torture_app ARGS`` named ``name``."""
        log = self.root / f"worker-{len(self.workers)}-{name}.log"
        cmd = [sys.executable, "-m", "conveyor", "worker", "torture_app", *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                env=self.env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )
        w = Worker(name, proc, log)
        self.workers.append(w)
        if ready:
            w.wait_ready()
        return w

    def runs(self) -> list[tuple[str, str, str, int]]:
        """(event, tag, worker name, pid) per line of the runs log."""
        if not self.runs_log.exists():
            return []
        lines = self.runs_log.read_text().splitlines()
        return [(e, t, n, int(p)) for e, t, n, p in (line.split() for line in lines)]

    def started(self, tag: str) -> list[str]:
        """Names of the workers that started ``tag``, in order."""
        return [n for e, t, n, _ in self.runs() if e == "start" and t == tag]

    def executed(self) -> list[str]:
        return [t for e, t, _, _ in self.runs() if e == "start"]

    def outputs(self) -> str:
        return "\n".join(f"--- {w.name} ({w.pid})\n{w.output()[-3000:]}" for w in self.workers)

    def cleanup(self) -> None:
        for w in self.workers:
            if w.alive():
                try:
                    if w.proc.pid == os.getpgid(w.proc.pid):
                        os.killpg(w.proc.pid, signal.SIGKILL)
                    else:
                        w.proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
                w.proc.wait(10)


def send(app: Conveyor, task: str, *args: Any, queue: str | None = None) -> Job[Any]:
    """Enqueue a ``torture_app`` task by name (on ``queue``, else the default queue)."""
    opts = app.defaults if queue is None else dataclasses.replace(app.defaults, queue=queue)
    job: Job[Any]
    (job,) = app.enqueue_many([Signature(app, f"torture_app:{task}", args, {}, opts)])
    return job


class Producer:
    """Enqueues ``jobs`` short ``sleepy`` jobs (tags ``job0``...) one at a time, in a thread;
    a call that raised is sent again with the same id until it is acknowledged (enqueue is
    idempotent on the id, so a write that landed before its reply was lost is not made
    twice). ``errors`` counts the calls that raised."""

    def __init__(self, app: Conveyor, jobs: int) -> None:
        self.app = app
        self.jobs = jobs
        self.acknowledged: list[str] = []
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from conveyor._errors import BrokerError

        for i in range(self.jobs):
            tag = f"job{i}"
            opts = dataclasses.replace(self.app.defaults, job_id=tag)
            sig: Signature[Any] = Signature(self.app, "torture_app:sleepy", (tag, 0.01), {}, opts)
            while True:
                try:
                    self.app.enqueue_many([sig])
                    break
                except BrokerError:
                    self.errors += 1
                    time.sleep(0.1)
            self.acknowledged.append(tag)
            time.sleep(0.005)


def assert_each_ran_once(
    cluster: Cluster, app: Conveyor, acknowledged: list[str], timeout: float, duplicates: int
) -> None:
    """Wait until every acknowledged job has ended, then check that none was lost and at
    most ``duplicates`` ran more than once (the jobs a fault cut short).

    A run's end is in its worker's log before its outcome is in the broker (the finisher
    writes it after), so the records are read until every one has ended too, within what
    is left of ``timeout``: read once at the last run's end, a job whose outcome was still
    on its way (a loaded machine, a finish retried after a restart) counted as lost."""
    from conveyor.testing.checker import check

    deadline = time.monotonic() + timeout
    wait_for(
        lambda: len({t for e, t, _, _ in cluster.runs() if e == "end"}) >= len(acknowledged),
        timeout,
        cluster.outputs,
    )
    while True:
        records = app.broker.get(acknowledged)
        completed = [r.id for r in records if r is not None and r.status.terminal]
        if len(completed) == len(acknowledged) or time.monotonic() > deadline:
            break  # a job still not ended by then is reported lost
        time.sleep(0.1)
    report = check(acknowledged=acknowledged, executed=cluster.executed(), completed=completed)
    report.assert_ok(max_duplicates=duplicates)
