"""The ``conveyor`` command as people and scripts run it: a subprocess, on SQLite and Redis.

Each test writes a tasks module (``jobs_app``: the project's worker module) whose app takes
the test's key prefix from ``JOBS_PREFIX``, so the Redis runs pass ``-A jobs_app`` the way
an operator of an app with its own prefix would. Output is read at ``COLUMNS=80``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, conveyor, wait_for
from conveyor import Conveyor, Job, JobStatus, Task
from redis_server import RedisServer, private_redis

# Each test runs the `conveyor` command a dozen times or more: an interpreter start each,
# which a machine busy with parallel tests can stretch to seconds.
pytestmark = pytest.mark.timeout(180)

TASKS = """
import os, time
from conveyor import Conveyor, current_job

app = Conveyor(prefix=os.environ["JOBS_PREFIX"])  # and CONVEYOR_URL, set by the test


@app.task(queue="images")
def resize(path: str, width: int = 100) -> str:
    if path == "bad":
        raise ValueError(f"cannot resize {path} [at all]")
    return f"{path}@{width}"


@app.task(queue="slow")
def crunch(seconds: float) -> str:
    current_job().progress(0.5, "halfway")
    for _ in range(int(seconds * 10)):  # short sleeps: a cancel can stop it between two
        time.sleep(0.1)
    return "done"


@app.task(queue="mail")
def send(to: str) -> str:
    return to
"""

# Only the schedules test's app has a periodic job: a worker of any other test would run its
# scheduler, and a tick that came due mid-test would add a job to the listings it checks.
PERIODIC = """

@app.periodic(cron="*/5 * * * *")
def cleanup() -> None: ...
"""


class Shop:
    """The producer's side: the same task names as ``jobs_app``, on the project's broker."""

    def __init__(self, project: Project) -> None:
        (project.root / "jobs_app.py").write_text(textwrap.dedent(TASKS))
        self.project = project
        self.app = project.app()
        self.resize = self._task("resize", "images")
        self.crunch = self._task("crunch", "slow")
        self.send = self._task("send", "mail")
        self.missing = self._task("missing", "images")  # the worker has no such task
        self.app.broker.stats()  # the database exists from here on (SQLite)

    def _task(self, name: str, queue: str) -> Task[..., Any]:
        def fn(*args: object) -> None: ...

        return self.app.task(name=f"jobs_app:{name}", queue=queue)(fn)

    def close(self) -> None:
        self.app.close()


@pytest.fixture
def shop(project: Project) -> Any:
    s = Shop(project)
    yield s
    s.close()


def as_json(project: Project, *args: str) -> Any:
    """``conveyor ARGS -A jobs_app --json``: stdout is one JSON document and nothing else."""
    return json.loads(conveyor(project, *args, "-A", "jobs_app", "--json").stdout)


def keeps_no_payload(broker_kind: str) -> bool:
    """Redis keeps no payload once a job succeeded, also where it keeps RabbitMQ's records."""
    return broker_kind in ("redis", "redis-cluster", "rabbitmq-redis")


def ids(document: dict[str, Any]) -> list[str]:
    return [j["id"] for j in document["jobs"]]


def settle(job: Job[Any], status: JobStatus, timeout: float = 20) -> None:
    wait_for(lambda: job.status is status, timeout, lambda: f"{job.id}: {job.status}")


def test_jobs_lists_every_status_and_job_shows_one(shop: Shop, broker_kind: str) -> None:
    project = shop.project
    jobs = {
        "queued": shop.send.delay("ann@example.com"),  # no worker takes "mail"
        "scheduled": shop.resize.options(delay=3600).delay("later.png"),
        "cancelled": shop.resize.options(delay=3600).delay("never.png"),
        "succeeded": shop.resize.delay("a.png", 640),
        "failed": shop.resize.delay("bad"),
        "dead": shop.missing.delay(),
        "running": shop.crunch.delay(600),  # until the worker is killed
    }
    project.worker("-q", "images,slow", "--grace", "0")
    for status in ("succeeded", "failed", "dead", "running"):
        settle(jobs[status], JobStatus(status))
    wait_for(lambda: jobs["running"].progress[0] == 0.5, 10)
    doomed = jobs["cancelled"].id
    assert as_json(project, "cancel", doomed) == {
        "jobs": [{"id": doomed, "before": "scheduled", "after": "cancelled",
                  "outcome": "cancelled"}]
    }  # fmt: skip
    _check_listings(project, jobs)
    _check_job(project, jobs, broker_kind)
    _check_info(project, jobs)


TASK_QUEUES = {"jobs_app:send": "mail", "jobs_app:crunch": "slow", "jobs_app:resize": "images",
               "jobs_app:missing": "images"}  # fmt: skip


def _check_listings(project: Project, jobs: dict[str, Job[Any]]) -> None:
    tasks = {"queued": "send", "running": "crunch", "dead": "missing"}
    for status, job in jobs.items():
        task = f"jobs_app:{tasks.get(status, 'resize')}"
        listing = as_json(project, "jobs", status)
        assert (listing["status"], listing["queue"], listing["task"]) == (status, None, None)
        assert [e["id"] for e in listing["jobs"]] == [job.id], listing
        (entry,) = listing["jobs"]
        assert entry["status"] == status
        assert entry["queue"] == TASK_QUEUES[task]
        # Redis keeps no payload once a job succeeded: the task comes from its events.
        assert entry["task"] == task
        assert entry["updated_at"].endswith("Z")
        assert abs(dt.datetime.fromisoformat(entry["updated_at"]).timestamp() - time.time()) < 60
        assert (entry["reason"] is None) == (status not in ("failed", "dead", "cancelled"))
    dead = as_json(project, "jobs", "dead")["jobs"][0]
    assert "unknown task 'jobs_app:missing'" in dead["reason"]


def _check_job(project: Project, jobs: dict[str, Job[Any]], broker_kind: str) -> None:
    bad = jobs["failed"].id
    failed = as_json(project, "job", bad)
    assert failed["task"] == "jobs_app:resize" and failed["status"] == "failed"
    assert (failed["args"], failed["kwargs"], failed["queue"]) == (["bad"], {}, "images")
    assert (failed["attempt"], failed["retries"], failed["deliveries"]) == (0, 0, 1)
    assert failed["error"]["type"] == "builtins.ValueError"
    assert failed["error"]["message"] == "cannot resize bad [at all]"
    assert 'raise ValueError(f"cannot resize {path} [at all]")' in failed["error"]["traceback"]
    assert failed["result"] is None
    enqueued = dt.datetime.fromisoformat(failed["enqueued_at"])
    assert abs(enqueued.timestamp() - time.time()) < 60
    assert failed["updated_at"] >= failed["enqueued_at"]

    human = conveyor(project, "job", bad, "-A", "jobs_app").stdout
    assert "Traceback (most recent call last)" in human
    assert "ValueError: cannot resize bad [at all]" in human  # brackets are not markup
    assert bad in human.splitlines()[0]

    done = as_json(project, "job", jobs["succeeded"].id)
    assert done["status"] == "succeeded" and done["result"] == "a.png@640"
    assert done["error"] is None and done["deliveries"] == 1
    if keeps_no_payload(broker_kind):
        assert done["task"] is None and done["payload_error"] == "payload not kept"
    else:
        assert done["task"] == "jobs_app:resize" and done["args"] == ["a.png", 640]
    running = as_json(project, "job", jobs["running"].id)
    assert (running["progress"], running["progress_note"]) == (0.5, "halfway")

    missing = conveyor(project, "job", "no-such-job", "-A", "jobs_app", code=1)
    assert missing.stdout == "" and "no-such-job" in missing.stderr
    assert missing.stderr.startswith("error: ")


def _check_info(project: Project, jobs: dict[str, Job[Any]]) -> None:
    info = as_json(project, "info")
    assert [j["id"] for j in info["running"]] == [jobs["running"].id]
    assert info["running"][0]["task"] == "jobs_app:crunch"
    (worker,) = info["workers"]
    assert worker["queues"] == ["images", "slow"] and worker["pid"] == project.workers[0].pid
    images = next(q for q in info["queues"] if q["queue"] == "images")
    assert (images["succeeded"], images["failed"], images["dead"]) == (1, 1, 1)
    assert (images["scheduled"], images["cancelled"], images["paused"]) == (1, 1, False)


def test_jobs_takes_the_largest_limit_its_help_shows(shop: Shop) -> None:
    # Regression: on Redis a --limit above 2**53 (9223372036854775807, the maximum --help
    # shows, or 1e17) reached its scripts as the float 1e+17: "value is not an integer or
    # out of range" instead of the jobs.
    project = shop.project
    waiting = shop.send.delay("a@example.com")
    later = shop.send.options(delay=3600).delay("b@example.com")
    gone = shop.send.delay("c@example.com")
    gone.cancel()
    for status, job in (("queued", waiting), ("scheduled", later), ("cancelled", gone)):
        for limit in (str(2**63 - 1), str(10**17)):
            assert ids(as_json(project, "jobs", status, "--limit", limit)) == [job.id]
        listed = shop.app.broker.entries(JobStatus(status), "mail", 2**63 - 1)
        assert [e.id for e in listed] == [job.id]
        for offset in (1, 2**53, 2**63 - 1):  # past the last job, however far
            assert shop.app.broker.entries(JobStatus(status), None, 2**63 - 1, offset) == []


def test_task_filter_pages_through_a_status(shop: Shop) -> None:
    project = shop.project
    shop.app.enqueue_many([shop.send.s(f"{i}@example.com") for i in range(230)])
    late = shop.app.enqueue_many([shop.resize.s(f"{i}.png") for i in range(3)])
    found = as_json(project, "jobs", "queued", "--task", "resize", "--limit", "2")
    assert ids(found) == [late[0].id, late[1].id]  # the order workers take them
    everything = as_json(project, "jobs", "queued", "--task", "jobs_app:resize", "--limit", "50")
    assert ids(everything) == [j.id for j in late]
    assert as_json(project, "jobs", "queued", "--task", "send", "-q", "images")["jobs"] == []
    assert len(as_json(project, "jobs", "queued", "--limit", "7")["jobs"]) == 7
    for bad in ("0", "-3"):
        usage = conveyor(project, "jobs", "queued", "--limit", bad, code=2)
        assert "--limit" in usage.stderr


def test_requeue_checks_every_id_first(shop: Shop) -> None:
    project = shop.project
    bad = shop.resize.delay("bad")
    ghost = shop.missing.delay()
    waiting = shop.send.delay("bob@example.com")
    doomed = shop.send.options(delay=3600).delay("carl@example.com")
    worker = project.worker("-q", "images")
    settle(bad, JobStatus.FAILED)
    settle(ghost, JobStatus.DEAD)
    worker.signal(15)
    assert worker.wait(30) == 0
    conveyor(project, "cancel", doomed.id, "-A", "jobs_app")

    unknown = conveyor(project, "requeue", bad.id, "nope-1", "-A", "jobs_app", code=1)
    assert "nope-1" in unknown.stderr and unknown.stdout == ""
    pending = conveyor(project, "requeue", bad.id, waiting.id, "-A", "jobs_app", code=1)
    assert waiting.id in pending.stderr and "queued" in pending.stderr
    assert bad.status is JobStatus.FAILED  # nothing was requeued

    assert as_json(project, "requeue", bad.id) == {
        "requeued": 1, "ids": [bad.id], "status": None, "queue": None, "left": 0,
        "left_jobs": [],
    }  # fmt: skip
    assert shop.app.job(bad.id).status is JobStatus.QUEUED
    moved = as_json(project, "requeue", "--all", "--status", "dead", "--queue", "images")
    assert moved == {"requeued": 1, "ids": None, "status": "dead", "queue": "images",
                     "left": 0, "left_jobs": None}  # fmt: skip
    assert shop.app.job(ghost.id).status is JobStatus.QUEUED
    line = conveyor(project, "requeue", "--all", "--status", "cancelled", "-A", "jobs_app")
    assert line.stdout.strip() == "requeued 1 cancelled job(s)"
    assert shop.app.job(doomed.id).status is JobStatus.QUEUED
    both = conveyor(project, "requeue", "--all", bad.id, "-A", "jobs_app", code=2)
    assert "not both" in both.stderr


def test_requeue_says_which_jobs_stayed_and_why(shop: Shop) -> None:
    # Regression: a job whose unique key another pending job held stayed cancelled while
    # `requeue ID` printed "requeued 0 job(s): ID" and exited 0, and `--all` said
    # "requeued": 0 and exited 0, nothing saying a job was left.
    project = shop.project
    nightly = shop.send.options(key="nightly")
    first, free = nightly.delay("a@example.com"), shop.send.delay("b@example.com")
    first.cancel()
    free.cancel()
    holder = nightly.delay("c@example.com")  # pending (no worker): it holds the key now
    assert holder.id != first.id

    text = conveyor(project, "requeue", first.id, free.id, "-A", "jobs_app", code=1).stdout
    requeued, why = text.splitlines()
    assert requeued == f"requeued 1 job(s): {free.id}"
    assert why.startswith(f"job {first.id} was not requeued: its unique key is held by "
                          f"pending job {holder.id}")  # fmt: skip
    document = json.loads(
        conveyor(project, "requeue", first.id, "-A", "jobs_app", "--json", code=1).stdout
    )
    (left,) = document.pop("left_jobs")
    assert document == {"requeued": 0, "ids": [], "status": None, "queue": None, "left": 1}
    assert (left["id"], left["held_by"]) == (first.id, holder.id)
    assert "is held by pending job" in left["message"]

    every = conveyor(project, "requeue", "--all", "--status", "cancelled", "-A", "jobs_app",
                     code=1)  # fmt: skip
    assert every.stdout.startswith("requeued 0 cancelled job(s); 1 left as they were")
    assert f"is held by pending job {holder.id}" in every.stderr  # logged
    moved = json.loads(conveyor(project, "requeue", "--all", "--status", "cancelled", "--json",
                                "-A", "jobs_app", code=1).stdout)  # fmt: skip
    assert moved == {"requeued": 0, "ids": None, "status": "cancelled", "queue": None,
                     "left": 1, "left_jobs": None}  # fmt: skip
    assert shop.app.job(first.id).status is JobStatus.CANCELLED
    holder.cancel()  # the key is free again: first goes back, and nothing is left
    done = as_json(project, "requeue", first.id)
    assert (done["ids"], done["left"], done["left_jobs"]) == ([first.id], 0, [])
    assert shop.app.job(first.id).status is JobStatus.QUEUED


def test_cancel_says_what_happened_to_each(shop: Shop) -> None:
    project = shop.project
    later = shop.send.options(delay=3600).delay("dan@example.com")
    busy = shop.crunch.delay(600)  # until it is cancelled
    ok = shop.resize.delay("ok.png")
    project.worker("-q", "images,slow", "--lease", "1")
    settle(ok, JobStatus.SUCCEEDED)
    settle(busy, JobStatus.RUNNING)

    unknown = conveyor(project, "cancel", later.id, "nope-2", "-A", "jobs_app", code=1)
    assert "nope-2" in unknown.stderr
    assert later.status is JobStatus.SCHEDULED  # every id is checked before any is cancelled

    out = conveyor(project, "cancel", later.id, busy.id, ok.id, "-A", "jobs_app").stdout
    lines = out.splitlines()
    assert lines[0] == f"cancelled {later.id} (it was scheduled)"
    assert lines[1].startswith(f"{busy.id} is running: its worker stops it")
    assert lines[2] == f"{ok.id} had already ended (succeeded): nothing to cancel"
    settle(busy, JobStatus.CANCELLED)  # at the worker's next renewal (a 1 s lease)


def test_delete_answers_per_job_and_leaves_a_running_one(shop: Shop) -> None:
    project = shop.project
    later = shop.send.options(delay=3600).delay("fay@example.com")
    busy = shop.crunch.delay(600)  # until it is cancelled
    bad = shop.resize.delay("bad")
    project.worker("-q", "images,slow", "--lease", "1")
    settle(bad, JobStatus.FAILED)
    settle(busy, JobStatus.RUNNING)

    unknown = conveyor(project, "delete", later.id, "nope-3", "-A", "jobs_app", code=1)
    assert "nope-3" in unknown.stderr
    assert later.status is JobStatus.SCHEDULED  # every id is checked before any is deleted

    out = conveyor(project, "delete", later.id, busy.id, "-A", "jobs_app", code=1).stdout
    first, second = out.splitlines()
    assert first == f"deleted {later.id} (it was scheduled)"
    assert second.startswith(f"job {busy.id} is running under its worker's live lease")
    assert "cancel it" in second
    assert shop.app.broker.get([later.id]) == [None]
    assert busy.status is JobStatus.RUNNING

    document = json.loads(
        conveyor(project, "delete", bad.id, busy.id, "-A", "jobs_app", "--json", code=1).stdout
    )
    assert document["deleted"] == 1
    assert [(j["id"], j["outcome"], j["status"]) for j in document["jobs"]] == [
        (bad.id, "deleted", "failed"),
        (busy.id, "running", "running"),
    ]
    assert shop.app.broker.get([bad.id]) == [None]
    listed = as_json(project, "jobs", "failed")["jobs"]
    assert bad.id not in [j["id"] for j in listed]
    conveyor(project, "cancel", busy.id, "-A", "jobs_app")
    settle(busy, JobStatus.CANCELLED)  # at the worker's next renewal (a 1 s lease)
    line = conveyor(project, "delete", busy.id, "-A", "jobs_app").stdout
    assert line.strip() == f"deleted {busy.id} (it was cancelled)"
    gone = conveyor(project, "job", busy.id, "-A", "jobs_app", code=1)
    assert busy.id in gone.stderr


def test_pause_and_resume_a_queue(shop: Shop) -> None:
    project = shop.project
    assert (
        "paused queue mail" in conveyor(project, "queues", "pause", "mail", "-A", "jobs_app").stdout
    )
    job = shop.send.delay("eve@example.com")
    project.worker("-q", "mail")
    time.sleep(1.5)
    assert job.status is JobStatus.QUEUED
    mail = next(q for q in as_json(project, "queues")["queues"] if q["queue"] == "mail")
    assert mail["paused"] is True and mail["queued"] == 1
    assert any(q["paused"] for q in as_json(project, "info")["queues"])
    table = conveyor(project, "info", "-A", "jobs_app").stdout
    assert any("mail" in line and "paused" in line for line in table.splitlines())
    # the group's -A/--url reach its subcommands too
    conveyor(project, "queues", "-A", "jobs_app", "resume", "mail")
    assert job.result(timeout=30) == "eve@example.com"
    mail = next(q for q in as_json(project, "queues")["queues"] if q["queue"] == "mail")
    assert mail["paused"] is False


def test_ping_answers_within_its_timeout(shop: Shop) -> None:
    project = shop.project
    ok = conveyor(project, "ping", "-A", "jobs_app")
    assert ok.stdout.startswith("ok: ") and "0 live worker(s)" in ok.stdout
    short = conveyor(project, "ping", "--workers", "1", "-A", "jobs_app", code=1)
    assert "fewer than the 1 required" in short.stderr
    project.worker("-q", "images")
    ready = as_json(project, "ping", "--workers", "1")
    assert ready["ok"] is True and ready["workers"] == 1 and ready["error"] is None


def test_ping_gives_up_on_a_broker_that_never_answers(tmp_path: Path) -> None:
    project = Project(tmp_path)
    with socket.socket() as silent:  # accepts connections (the backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        hung = conveyor(project, "ping", "--url", url, "--timeout", "1", "--json", code=1)
        elapsed = time.monotonic() - started
    assert elapsed < 20, elapsed  # start-up and the 1 s timeout, not redis-py's 4 x 10 s
    answer = json.loads(hung.stdout)
    assert answer["ok"] is False and "did not answer within 1 s" in answer["error"]


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{root}/missing.db",
        "postgresql://bob:pw@127.0.0.1:1/x",
        "redis://:pw@127.0.0.1:1/0",
    ],
    ids=["sqlite", "postgres", "redis"],
)
def test_ping_names_the_broker_it_could_not_reach(tmp_path: Path, url: str) -> None:
    # Regression: `broker` was null where the broker connects as it opens (SQLite,
    # PostgreSQL), though docs/cli.md shows it filled, as it was on Redis.
    project = Project(tmp_path)
    url = url.format(root=tmp_path)
    answer = json.loads(conveyor(project, "ping", "--url", url, "--json", code=1).stdout)
    assert answer["ok"] is False and answer["error"]
    assert answer["broker"] == url.replace(":pw@", ":***@")


READ_ONLY = [
    ("info",),
    ("jobs", "failed"),
    ("job", "01a21ed9cd6e3b4c21bba6e0b0"),
    ("queues",),
    ("ping",),
    ("cancel", "01a21ed9cd6e3b4c21bba6e0b0"),
    ("requeue", "--all"),
    ("queues", "pause", "mail"),
    ("purge", "mail", "--yes"),
]


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: "-".join(a[:2]))
def test_no_command_but_worker_and_demo_creates_a_database(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    project = Project(tmp_path)
    target = tmp_path / "elsewhere" / "jobs.db"
    result = conveyor(project, *args, "--url", f"sqlite:///{target}", code=1)
    assert str(target) in result.stderr and "--url sqlite:////" in result.stderr
    assert result.stderr.startswith("error: no SQLite database at ")
    assert not target.parent.exists()


@contextmanager
def worker_process(root: Path, args: list[str], env: dict[str, str]) -> Iterator[Path]:
    """``conveyor ARGS`` (a worker) in ``root``, its output in a file whose path is
    yielded once the worker has logged its start; stopped with SIGTERM, exit 0."""
    log = root / f"worker-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: "conveyor worker" in log.read_text(), 30, log.read_text)
        yield log
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()


def test_worker_url_wins_over_the_app_and_creates_the_folder(tmp_path: Path) -> None:
    project = Project(tmp_path)
    (tmp_path / "pinned.py").write_text(
        "from conveyor import Conveyor\n"
        "app = Conveyor('sqlite:///wrong.db')\n\n"
        "@app.task\n"
        "def double(x: int) -> int:\n"
        "    return 2 * x\n"
    )
    target = tmp_path / "new" / "folder" / "jobs.db"
    url = f"sqlite:///{target}"
    env = {k: v for k, v in project.env().items() if k != "CONVEYOR_URL"}
    with worker_process(tmp_path, ["worker", "-A", "pinned", "--url", url], env) as log:
        app = Conveyor(url)
        double = app.task(name="pinned:double")(lambda x: x)
        assert double.delay(21).result(timeout=10) == 42
        app.close()
    assert not (tmp_path / "wrong.db").exists()
    assert f"broker {url}" in log.read_text()


def test_worker_log_level_and_verbose(shop: Shop) -> None:
    project = shop.project
    quiet = project.worker("-q", "images", "--log-level", "warning", ready=False)
    job = shop.resize.delay("q.png")
    assert job.result(timeout=20) == "q.png@100"
    quiet.signal(15)
    assert quiet.wait(30) == 0
    assert "conveyor worker" not in quiet.output()  # the INFO banner is below warning

    env = {**project.env(), "CONVEYOR_LOG_LEVEL": "error"}  # -v wins over the environment
    args = ["-v", "worker", "-A", "jobs_app", "-q", "images"]
    with worker_process(project.root, args, env) as log:
        assert shop.resize.delay("v.png").result(timeout=20) == "v.png@100"
        wait_for(lambda: "succeeded in" in log.read_text(), 10, log.read_text)
    debug = [line for line in log.read_text().splitlines() if "DEBUG" in line]
    assert any("conveyor.worker" in line for line in debug)
    assert all("conveyor" in line for line in debug), debug  # no client library's lines

    bad = conveyor(project, "worker", "-A", "jobs_app", env={"CONVEYOR_LOG_LEVEL": "loud"}, code=2)
    assert "CONVEYOR_LOG_LEVEL" in bad.stderr


def test_worker_logs_json_lines(shop: Shop) -> None:
    project = shop.project
    env = {**project.env(), "CONVEYOR_LOG_FORMAT": "json"}
    args = ["worker", "-A", "jobs_app", "-q", "images", "--log-level", "debug"]
    with worker_process(project.root, args, env) as log:
        job = shop.resize.delay("j.png")
        assert job.result(timeout=20) == "j.png@100"
        wait_for(lambda: "succeeded in" in log.read_text(), 10, log.read_text)
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every line
    assert lines[0]["logger"] == "conveyor.worker" and lines[0]["level"] == "INFO"
    assert lines[0]["message"].startswith("conveyor worker ")
    assert any(line.get("job_id") == job.id for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)


def test_schedules_show_the_next_fire_time(shop: Shop) -> None:
    project = shop.project
    (project.root / "jobs_app.py").write_text(textwrap.dedent(TASKS) + PERIODIC)
    (project.root / "zoned.py").write_text(
        textwrap.dedent(
            """
            from jobs_app import app

            @app.periodic(cron="0 3 * * *", tz="Asia/Tokyo")  # 03:00 on Tokyo's clock
            def nightly() -> None: ...
            """
        )
    )
    before = time.time()
    found = as_json(project, "schedules")
    (cleanup,) = found["schedules"]
    assert cleanup["name"] == "jobs_app:cleanup" and cleanup["cron"] == "*/5 * * * *"
    fire = dt.datetime.fromisoformat(cleanup["next_fire_at"]).timestamp()
    assert fire % 300 == 0 and before < fire <= time.time() + 300
    assert cleanup["tz"] == "UTC" and cleanup["next_fire_local"].endswith("+00:00")

    zoned = json.loads(
        conveyor(project, "schedules", "-A", "zoned:app", "--json", "-n", "2").stdout
    )
    nightly = next(s for s in zoned["schedules"] if s["name"] == "zoned:nightly")
    assert nightly["tz"] == "Asia/Tokyo"
    utc = dt.datetime.fromisoformat(nightly["next_fire_at"])
    local = dt.datetime.fromisoformat(nightly["next_fire_local"])
    assert local == utc and local.utcoffset() == dt.timedelta(hours=9)
    assert local.hour == 3 and local.minute == 0  # the cron, read on Tokyo's wall clock
    assert len(nightly["upcoming"]) == 2
    wide = conveyor(project, "schedules", "-A", "zoned:app", env={"COLUMNS": "120"}).stdout
    assert "zoned:nightly" in wide and f"{local:%Y-%m-%d %H:%M:%S} JST" in wide
    # At 80 columns (a pipe's) the times wrap rather than squeeze the schedule column to
    # nothing, header and all, as they did.
    table = conveyor(project, "schedules", "-A", "zoned:app").stdout
    assert "schedule" in table and "cron 0 3 * * *" in table
    assert f"{local:%Y-%m-%d}" in table and f"{local:%H:%M:%S}" in table

    usage = conveyor(project, "schedules", code=2)
    assert "-A MODULE" in usage.stderr


def test_ids_stay_whole_at_80_columns(shop: Shop) -> None:
    project = shop.project
    long_id = "import-2025-03-01-customer-4711-" + "x" * 20
    shop.resize.options(job_id=long_id).delay("bad")
    bad = [shop.resize.delay("bad") for _ in range(2)]
    project.worker("-q", "images")
    for job in [*bad, shop.app.job(long_id)]:
        settle(job, JobStatus.FAILED)
    for args in (("jobs", "failed"), ("info",), ("job", long_id)):
        out = conveyor(project, *args, "-A", "jobs_app").stdout
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= 80, out
        wanted = [long_id, *(j.id for j in bad)] if args[0] == "jobs" else [long_id]
        if args[0] == "info":
            wanted = [project.workers[0].output().split("conveyor worker ")[1].split(":")[0]]
        for job_id in wanted:
            assert any(job_id in line for line in lines), (job_id, out)


def test_errors_are_one_line_and_never_show_a_password(tmp_path: Path) -> None:
    project = Project(tmp_path)
    url = "redis://operator:s3cret-pw@127.0.0.1:1/0"
    for args in (("info",), ("ping", "--json"), ("jobs", "dead", "--json")):
        result = conveyor(project, *args, "--url", url, code=1)
        assert "s3cret" not in result.stdout + result.stderr, result
    refused = conveyor(project, "info", "--url", url, code=1)
    assert refused.stdout == "" and refused.stderr.startswith("error: ")
    assert "Traceback" not in refused.stderr
    bad_id = conveyor(project, "job", "no*such", "--url", f"sqlite:///{tmp_path}/x.db", code=2)
    assert "no*such" in bad_id.stderr and "Traceback" not in bad_id.stderr
    unknown = conveyor(project, "jobs", "lost", code=2)
    assert "lost" in unknown.stderr


def test_bad_input_is_a_usage_error_that_says_what_to_do(tmp_path: Path) -> None:
    project = Project(tmp_path)
    (tmp_path / "needs_more.py").write_text("import not_installed_anywhere\n")
    huge = conveyor(project, "jobs", "failed", "--limit", str(2**63), code=2)
    assert "Traceback" not in huge.stderr and "--limit" in huge.stderr
    empty = conveyor(project, "jobs", "failed", "-A", ":app", code=2)
    assert "name a module to import" in empty.stderr and "Traceback" not in empty.stderr
    dependency = conveyor(project, "jobs", "failed", "-A", "needs_more", code=2)
    assert "It imports 'not_installed_anywhere', which is not installed" in dependency.stderr
    # purge asks first; with no one to answer (input not a terminal), it says to pass --yes
    unasked = conveyor(project, "purge", "images", code=2)
    assert "pass --yes" in unasked.stderr


def test_job_json_is_valid_json_whatever_a_pickled_result_holds(tmp_path: Path) -> None:
    """NaN, infinities and dict keys JSON has no form for (a tuple) come out as their repr:
    the document stays one a strict JSON reader takes."""
    project = Project(tmp_path)
    url = f"sqlite:///{tmp_path}/pickled.db"
    (tmp_path / "pickled_app.py").write_text(
        "from conveyor import Conveyor\n"
        f"app = Conveyor({url!r}, serializer='pickle', secret='s3cret')\n\n"
        "@app.task\n"
        "def odd() -> dict:\n"
        "    return {(1, 2): float('nan'), 'inf': [float('inf')]}\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import pickled_app

        from conveyor.testing import drain

        job = pickled_app.odd.delay()
        drain(pickled_app.app)
        pickled_app.app.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("pickled_app", None)

    def strict(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    out = conveyor(project, "job", job.id, "-A", "pickled_app", "--url", url, "--json").stdout
    document = json.loads(out, parse_constant=strict)
    assert document["result"] == {"(1, 2)": "nan", "inf": ["inf"]}
    shown = conveyor(project, "job", job.id, "-A", "pickled_app", "--url", url).stdout
    assert '"(1, 2)": "nan"' in shown


def test_job_shows_an_argument_whose_repr_raises(tmp_path: Path) -> None:
    """A pickled argument whose ``__repr__`` raises was a raw traceback: it is shown as
    what it raised, the rest of the job as it is."""
    project = Project(tmp_path)
    url = f"sqlite:///{tmp_path}/unprintable.db"
    (tmp_path / "unprintable_app.py").write_text(
        "from conveyor import Conveyor\n"
        f"app = Conveyor({url!r}, serializer='pickle', secret='s3cret')\n\n"
        "class Unprintable:\n"
        "    def __repr__(self) -> str:\n"
        "        raise RuntimeError('no repr')\n\n"
        "@app.task\n"
        "def send(to: object, **options: object) -> None: ...\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import unprintable_app

        job = unprintable_app.send.delay(unprintable_app.Unprintable(), cc={1: "x"})
        unprintable_app.app.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("unprintable_app", None)

    args = ("job", job.id, "-A", "unprintable_app", "--url", url)
    document = json.loads(conveyor(project, *args, "--json").stdout)
    assert document["args"] == ["(cannot be shown: RuntimeError)"]
    assert (document["kwargs"], document["status"]) == ({"cc": {"1": "x"}}, "queued")
    shown = conveyor(project, *args).stdout
    assert '["(cannot be shown: RuntimeError)"]' in shown and "queued" in shown


def test_dashboard_on_a_port_in_use_says_so_and_port_0_takes_a_free_one(tmp_path: Path) -> None:
    project = Project(tmp_path)
    url = f"sqlite:///{tmp_path}/dash.db"
    conveyor(project, "migrate", "--url", url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = conveyor(project, "dashboard", "--port", str(port), "--url", url, code=1)
    assert taken.stderr.startswith(f"error: cannot serve the dashboard on 127.0.0.1:{port}")
    assert "another --port" in taken.stderr and "Traceback" not in taken.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "dashboard", "--port", "0", "--url", url],
        cwd=tmp_path, env=project.env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        announced = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", announced)
        assert found and found[1] != "0", announced
        wait_for(lambda: _answers(f"http://127.0.0.1:{found[1]}/"), 30, lambda: announced)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_migrate_says_from_which_version_to_which_on_sqlite(tmp_path: Path) -> None:
    project = Project(tmp_path)
    url = f"sqlite:///{tmp_path}/new.db"
    first = json.loads(conveyor(project, "migrate", "--url", url, "--json").stdout)
    assert first["from_version"] == 0 and first["to_version"] >= 1 and first["changed"]
    again = conveyor(project, "migrate", "--url", url).stdout
    assert f"its tables are up to date (version {first['to_version']})" in again


@pytest.mark.redis
def test_redis_password_is_masked_in_output(
    tmp_path: Path, fresh_redis_server: RedisServer
) -> None:
    fresh_redis_server.client().config_set("requirepass", "s3cret-pw")
    url = f"redis://:s3cret-pw@127.0.0.1:{fresh_redis_server.port}/0"
    project = Project(tmp_path, url)
    out = conveyor(project, "info").stdout + conveyor(project, "ping").stdout
    out += conveyor(project, "queues", "--json").stdout
    assert "s3cret" not in out and "redis://:***@127.0.0.1" in out
    wrong = conveyor(project, "info", "--url", url.replace("s3cret-pw", "wrong-pw"), code=1)
    assert "wrong-pw" not in wrong.stderr and "s3cret" not in wrong.stderr


def test_demo_says_exactly_how_to_see_its_jobs(tmp_path: Path) -> None:
    project = Project(tmp_path)
    target = tmp_path / "demo folder" / "demo.db"
    env = {"CONVEYOR_URL": f"sqlite:///{target}"}  # the demo honours CONVEYOR_URL
    out = conveyor(project, "demo", "-n", "30", "-c", "2", env=env).stdout
    assert target.exists()
    (next_line,) = [line for line in out.splitlines() if line.startswith("Next: ")]
    command = shlex.split(next_line.split("`")[1])  # quoted where the shell needs it
    assert command[1:] == ["info", "--url", f"sqlite:///{target}"]
    assert command[0] == "conveyor" or os.access(command[0], os.X_OK), command
    shown = json.loads(conveyor(project, "info", "--url", f"sqlite:///{target}", "--json").stdout)
    (demo,) = shown["queues"]
    assert (demo["queue"], demo["succeeded"]) == ("demo", 30)


def test_help_and_completion(tmp_path: Path) -> None:
    project = Project(tmp_path)
    commands = ["", "info", "jobs", "job", "cancel", "requeue", "purge", "queues",
                "queues pause", "queues resume", "schedules", "ping", "worker", "exporter",
                "demo"]  # fmt: skip
    for name in commands:
        text = conveyor(project, *name.split(), "--help").stdout
        assert "``" not in text, (name, text)
        if name:
            assert "--url" in text, name
        if name not in ("", "demo"):
            assert "-A, --app" in text, name
    script = conveyor(project, env={"_CONVEYOR_COMPLETE": "bash_source"}).stdout
    assert "_conveyor_completion" in script and "complete " in script


def test_info_and_ping_say_what_is_wrong_with_an_evicting_redis(tmp_path: Path) -> None:
    server = private_redis(tmp_path / "redis")
    try:
        client = server.client()
        client.config_set("maxmemory", "64mb")
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()
        (tmp_path / "project").mkdir()
        project = Project(tmp_path / "project", server.url)
        url = server.url
        info = conveyor(project, "info", "--url", url)
        assert "warning: Redis evicts keys when it is full" in info.stderr
        assert "allkeys-lru" in info.stderr
        ping = conveyor(project, "ping", "--url", url)  # answers: still a pass
        assert ping.stdout.startswith("ok: ")
        assert "warning: Redis evicts keys when it is full" in ping.stderr
        document = json.loads(conveyor(project, "info", "--url", url, "--json").stdout)
        (line,) = document["warnings"]
        assert "maxmemory-policy allkeys-lru" in line
        probe = json.loads(conveyor(project, "ping", "--url", url, "--json").stdout)
        assert probe["ok"] is True and probe["warnings"] == document["warnings"]
    finally:
        server.stop()
