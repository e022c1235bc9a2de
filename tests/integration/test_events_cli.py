"""``conveyor events`` as a user runs it, beside a real ``conveyor worker``, on SQLite and on
Redis: every event of the jobs and of the worker reaches its stdout, as JSON or as lines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import CommandProcess, Project, wait_for
from conveyor import Conveyor, Signature, TaskFailed

TASKS = """
import os
from conveyor import Conveyor

app = Conveyor(prefix=os.environ["JOBS_PREFIX"])  # and CONVEYOR_URL, set by the test


@app.task(queue="maths")
def add(x: int, y: int) -> int:
    return x + y


@app.task(queue="maths", retries=1, backoff=0.01)
def boom() -> None:
    raise ZeroDivisionError("by design")
"""


class Follower(CommandProcess):
    """One ``conveyor events`` subprocess."""

    def __init__(self, project: Project, *args: str) -> None:
        super().__init__(project.root, project.env(), "events", *args)

    def lines(self) -> list[str]:
        return self.stdout().splitlines()

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def describe(self) -> str:
        return f"stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}"


@pytest.fixture
def events_project(project: Project) -> Project:
    """The project, its jobs_app holding the tasks above."""
    (project.root / "jobs_app.py").write_text(textwrap.dedent(TASKS))
    return project


def _types(events: list[dict[str, Any]], job_id: str) -> list[str]:
    return [e["type"] for e in events if e.get("job_id") == job_id]


@pytest.mark.timeout(120)
def test_json_lines_follow_every_job_and_the_worker(events_project: Project) -> None:
    p = events_project
    worker = p.worker("-q", "maths", "-c", "2")  # first: it makes the SQLite database
    follower = Follower(p, "--json", "--since", "5m", "-A", "jobs_app")
    try:
        app = p.app()
        ok_id = _send(app, "add", 2, 3)
        boom_id = _send(app, "boom")
        want_ok = ["job.enqueued", "job.started", "job.succeeded"]
        want_boom = ["job.enqueued", "job.started", "job.retried", "job.started", "job.failed"]
        wait_for(
            lambda: (
                _types(follower.json(), ok_id) == want_ok
                and _types(follower.json(), boom_id) == want_boom
            ),
            30,
            lambda: follower.describe() + worker.output(),
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        wait_for(
            lambda: any(e["type"] == "worker.offline" for e in follower.json()),
            10,
            follower.describe,
        )
        assert follower.stop() == 0, follower.describe()
    finally:
        follower.kill()
    events = follower.json()
    online = next(e for e in events if e["type"] == "worker.online")
    assert online["queues"] == ["maths"] and online["concurrency"] == 2
    assert online["pid"] == worker.pid
    done = next(e for e in events if e.get("job_id") == ok_id and e["type"] == "job.succeeded")
    assert done["task"] == "jobs_app:add" and done["queue"] == "maths"
    assert done["worker_id"] == online["worker_id"] and done["duration"] >= 0
    failed = next(e for e in events if e.get("job_id") == boom_id and e["type"] == "job.failed")
    assert (failed["attempt"], failed["error"]) == (1, "builtins.ZeroDivisionError")
    offline = next(e for e in events if e["type"] == "worker.offline")
    assert offline["processed"] == 3  # add, boom, boom again
    assert not follower.err.read_text()


def _send(app: Conveyor, task: str, *args: object) -> str:
    """Enqueue a task of jobs_app by name (this process does not import it)."""
    opts = app.defaults.merge(queue="maths", retries=1, backoff=0.01)
    (job,) = app.enqueue_many([Signature(app, f"jobs_app:{task}", args, {}, opts)])
    return job.id


@pytest.mark.timeout(120)
def test_lines_of_the_recent_past_then_live_filtered_by_type(
    events_project: Project, broker_kind: str
) -> None:
    p = events_project
    app = p.app()
    worker = p.worker("-q", "maths")
    before = _send(app, "boom")
    with pytest.raises(TaskFailed):
        app.job(before).result(timeout=30)
    where = ["--url", p.url] if broker_kind == "sqlite" else ["-A", "jobs_app"]
    follower = Follower(p, "--since", "10m", "--type", "job.failed,worker.off*", *where)
    try:
        wait_for(lambda: len(follower.lines()) == 1, 20, follower.describe)
        live = _send(app, "boom")  # after the follower printed the past: it is live now
        wait_for(lambda: len(follower.lines()) == 2, 20, follower.describe)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        wait_for(lambda: len(follower.lines()) == 3, 20, follower.describe)
        assert follower.stop() == 0
    finally:
        follower.kill()
    past, now, offline = follower.lines()
    for text, job_id in ((past, before), (now, live)):
        assert f" job.failed       {job_id}  jobs_app:boom  [maths]  attempt 1  in " in text
        assert text.endswith(f"builtins.ZeroDivisionError  on {_worker_id(p)}")
    assert " worker.offline   " in offline and offline.endswith("4 job(s) processed")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--type", "job.finished"], "matches no event type"),
        (["--since", "five minutes"], "bad duration"),
        ([], "no SQLite database at"),  # a read-only command: it makes none
    ],
)
def test_bad_options_say_what_to_write(tmp_path: Path, args: list[str], says: str) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "events", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1 and says in done.stderr, done.stderr
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def _worker_id(p: Project) -> str:
    """The id the project's (one) worker logged in its banner."""
    return p.workers[0].output().split("conveyor worker ", 1)[1].split(":", 1)[0]
