"""``conveyor worker`` subprocesses on each broker worker processes share (``tests/brokers.py``:
SQLite, Redis, PostgreSQL): crashes, long jobs, SIGTERM, bad input. The ``project`` fixture
(conftest) runs every test once per broker.

Every job's runs are counted from an append-only log the tasks write, so "exactly once"
and "nothing lost" are checked on what really happened, not on what the broker says.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from conftest import Project, wait_for
from conveyor import Conveyor, JobDead, Signature
from conveyor._message import Envelope, Message, new_job_id

pytestmark = pytest.mark.slow


def _app(project: Project) -> Conveyor:
    return project.app()


def _send(app: Conveyor, task: str, *args: Any) -> Any:
    """Enqueue ``jobs_app`` tasks by name: this test process never imports the module."""
    (job,) = app.enqueue_many([Signature(app, f"jobs_app:{task}", args, {}, app.defaults)])
    return job


def _raw(app: Conveyor, task: str, *args: Any) -> str:
    job_id = new_job_id()
    payload = app.codec.encode_message(Message(id=job_id, task=task, args=list(args)))
    app.broker.enqueue([Envelope(job_id, "default", payload)])
    return job_id


@pytest.mark.timeout(90)
def test_a_worker_killed_mid_job_loses_nothing(project: Project) -> None:
    app = _app(project)
    first = project.worker("--lease", "1", "-c", "2")
    killed = _send(app, "slow", "killed", 1.5)
    wait_for(lambda: project.started("killed") == [first.pid], 30, first.output)
    others = [_send(app, "double", i) for i in range(20)]
    first.signal(signal.SIGKILL)
    first.wait(10)

    second = project.worker("--lease", "1")
    assert killed.result(timeout=30) == "killed"
    assert [j.result(timeout=30) for j in others] == [i * 2 for i in range(20)]
    assert project.started("killed") == [first.pid, second.pid]
    assert ("end", "killed", second.pid) in project.runs()
    app.close()


@pytest.mark.timeout(90)
def test_a_job_four_times_longer_than_its_lease_runs_exactly_once(project: Project) -> None:
    app = _app(project)
    workers = [project.worker("--lease", "1", "-c", "2") for _ in range(2)]
    job = _send(app, "slow", "long", 4.0)
    assert job.result(timeout=40) == "long"
    time.sleep(1.5)  # one more lease period: a wrongful reclaim would show up by now
    assert len(project.started("long")) == 1, [w.output() for w in workers]
    assert [e for e, t, _ in project.runs() if t == "long"] == ["start", "end"]
    app.close()


@pytest.mark.timeout(90)
def test_sigterm_exits_0_within_grace_and_another_worker_completes_the_job(
    project: Project,
) -> None:
    app = _app(project)
    first = project.worker("--grace", "1", "--lease", "60")
    job = _send(app, "slow", "handed-back", 12.0)
    wait_for(lambda: project.started("handed-back") == [first.pid], 30, first.output)

    began = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0, first.output()
    assert time.monotonic() - began < 8  # its 1 s grace, not the job's 12 s
    assert "handed back 1 unfinished job" in first.output()

    # Released, not left to its 60 s lease: the next worker starts it at once.
    second = project.worker("--lease", "60")
    wait_for(lambda: len(project.started("handed-back")) == 2, 30, second.output)
    assert job.result(timeout=30) == "handed-back"
    assert project.started("handed-back") == [first.pid, second.pid]
    app.close()


@pytest.mark.timeout(90)
def test_sigterm_lets_a_short_job_finish_then_exits_0(project: Project) -> None:
    app = _app(project)
    worker = project.worker("--grace", "10")
    job = _send(app, "slow", "finishes", 1.0)
    wait_for(lambda: project.started("finishes") == [worker.pid], 30, worker.output)
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()
    assert job.result(timeout=30) == "finishes"
    assert ("end", "finishes", worker.pid) in project.runs()
    assert app.broker.workers() == []  # it said goodbye
    app.close()


@pytest.mark.timeout(90)
def test_unknown_and_untrusted_tasks_are_dead_lettered_and_the_worker_goes_on(
    project: Project,
) -> None:
    app = _app(project)
    pwned = project.root / "pwned"
    unknown = _raw(app, "jobs_app:no_such_task")
    unregistered = _raw(app, "nonsense")
    untrusted = _raw(app, "os:system", f"touch {pwned}")
    evaluated = _raw(app, "builtins:eval", "1 + 1")
    worker = project.worker()
    after = _send(app, "double", 21)
    assert after.result(timeout=30) == 42

    reasons = {}
    for job_id in (unknown, unregistered, untrusted, evaluated):
        with pytest.raises(JobDead) as info:
            app.job(job_id).result(timeout=10)
        reasons[job_id] = info.value.reason
    assert reasons[unknown].startswith("unknown task 'jobs_app:no_such_task'")
    assert reasons[unregistered].startswith("unknown task 'nonsense'")
    assert reasons[untrusted].startswith("untrusted callable 'os:system'")
    assert reasons[evaluated].startswith("untrusted callable 'builtins:eval'")
    assert not pwned.exists()
    assert worker.proc.poll() is None  # still running
    app.close()


@pytest.mark.timeout(90)
def test_the_process_pool_runs_jobs_and_stops_cleanly(project: Project) -> None:
    app = _app(project)
    worker = project.worker("--pool", "processes", "-c", "2")
    jobs = [_send(app, "double", i) for i in range(10)]
    assert [j.result(timeout=30) for j in jobs] == [i * 2 for i in range(10)]
    worker.signal(signal.SIGTERM)  # the terminal's whole process group would get it too
    assert worker.wait(15) == 0, worker.output()
    app.close()
