"""Tasks that misbehave, run by real ``conveyor worker`` subprocesses on SQLite and Redis:
hostile exceptions, ``SystemExit`` and ``KeyboardInterrupt`` raised by a task, results over
the cap, threads a task leaves running, an async task that blocks the event loop. Whatever
they do, their job ends (failed, with the best description there is), the worker keeps its
slots, and SIGTERM still ends it within its grace with exit code 0.

The tasks are ``tests/hostile.py``'s, appended to the project's ``jobs_app``.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from conftest import Project, WorkerProcess, children_of, wait_for
from conveyor import Conveyor, JobStatus, Signature, TaskFailed
from hostile import TASKS, exception_specs, failure, stored, unprintable

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
# Stored failures stay well under this, whatever the exception (see _describe's caps).
ERROR_BOUND = 600 * 1024


def _start(project: Project, *args: str) -> tuple[Conveyor, WorkerProcess]:
    with open(project.root / "jobs_app.py", "a") as f:
        f.write(TASKS)
    return project.app(), project.worker(*args)


def _send(app: Conveyor, task: str, *args: Any) -> Any:
    (job,) = app.enqueue_many([Signature(app, f"jobs_app:{task}", args, {}, app.defaults)])
    return job


SPECS: list[dict[str, Any]] = [
    {"base": "Exception", "str": ["raise_self"]},  # once killed a pool thread
    {"base": "ValueError", "str": ["raise", "SystemExit"]},
    {"base": "Exception", "str": ["raise", "KeyboardInterrupt"], "meta": True},
    {"base": "Exception", "args": "GeneratorExit", "module": "nonstr"},
    {"base": "SystemExit"},
    {"base": "KeyboardInterrupt"},
    {"base": "GeneratorExit", "tb_property": True, "notes": "int"},
    {"base": "Exception", "str": ["huge", 5 * MIB], "cause": {"base": "Exception"}},
    {"base": "Exception", "str": ["surrogate"], "qualname": 3000},
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_hostile_exceptions_fail_their_jobs_and_the_worker_keeps_its_slot(
    project: Project, pool: str
) -> None:
    app, worker = _start(project, "--pool", pool, "-c", "1")
    for spec in SPECS:
        for task in ("fail", "afail"):
            job = _send(app, task, spec)
            error = failure(job)
            if unprintable(spec):
                assert error.remote_message.startswith("<unprintable Hostile (str() raised ")
            assert "Traceback (most recent call last):" in error.remote_traceback
            assert stored(app, job) < ERROR_BOUND
    assert _send(app, "fine", "still here").result(timeout=30) == "still here"
    assert worker.proc.poll() is None, worker.output()
    output = worker.output()
    assert "(jobs_app:fail) failed after" in output
    assert "WARNING" in output
    # SystemExit and KeyboardInterrupt raised by a task failed that job; they did not stop
    # the worker, and they were said.
    assert "jobs_app.Hostile: plain message" in output
    app.close()


@pytest.mark.timeout(120)
def test_any_drawn_hostile_exception_fails_its_job_in_a_worker(project: Project) -> None:
    app, worker = _start(project, "--pool", "threads", "-c", "1")

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(spec=exception_specs())
    def one(spec: dict[str, Any]) -> None:
        error = failure(_send(app, "fail", spec))
        assert len(error.remote_message) <= 16 * 1024
        assert len(error.remote_traceback) <= 64 * 1024

    one()
    assert _send(app, "fine", 1).result(timeout=30) == 1
    assert worker.proc.poll() is None
    app.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_result_over_the_cap_fails_with_its_size_and_nothing_big_is_stored(
    project: Project, pool: str
) -> None:
    app, _ = _start(project, "--pool", pool)
    under = _send(app, "give", "big", MIB - 12)  # {"value":"..."} is 12 bytes more
    over = _send(app, "give", "big", 2 * MIB)
    assert under.result(timeout=30) == "x" * (MIB - 12)
    error = failure(over)
    assert error.remote_type == "conveyor._errors.ResultTooLarge"
    assert error.remote_message == (
        f"the task's result encodes to {2 * MIB + 12:,} bytes, over the 1,048,576-byte cap "
        "on results; store large results elsewhere (a file, object store or app.store) and "
        "return their key, or raise Conveyor(max_result=...)"
    )
    assert stored(app, over) < 10_000
    huge_error = _send(app, "fail", {"base": "Exception", "str": ["huge", 8 * MIB]})
    assert "characters cut" in failure(huge_error).remote_message
    assert stored(app, huge_error) < ERROR_BOUND
    app.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_sigterm_exits_0_within_grace_though_a_task_left_a_thread_running(
    project: Project, pool: str
) -> None:
    app, worker = _start(project, "--pool", pool, "--grace", "2")
    assert _send(app, "leave_thread", "left-behind").result(timeout=30) == "left-behind"
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(45) == 0, worker.output()
    assert time.monotonic() - began < 30  # its grace, not the left thread's hour
    output = worker.output()
    assert "1 thread(s) that tasks started are still running: 'left-behind'" in output, output
    assert "WARNING" in output
    app.close()


@pytest.mark.timeout(90)
def test_sigterm_exits_0_within_grace_while_an_async_task_blocks_the_loop(
    project: Project,
) -> None:
    app, worker = _start(project, "--pool", "async", "--grace", "1")
    blocker = _send(app, "block", 60)
    wait_for(lambda: "has blocked the event loop" in worker.output(), 30, worker.output)
    assert f"job {blocker.id} (jobs_app:block) has blocked the event loop" in worker.output()
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(45) == 0, worker.output()
    assert time.monotonic() - began < 30  # grace, then the loop thread is not waited for (60 s)
    assert "handed back 1 unfinished job" in worker.output()
    assert blocker.status is JobStatus.QUEUED  # handed back for another worker
    app.close()


# -- the process pool's children ------------------------------------------------------------

CHILD_TASKS = """

import sys

if sys.argv[0].endswith("_child.py") and os.environ.get("SLOW_CHILD_IMPORT"):
    time.sleep(float(os.environ["SLOW_CHILD_IMPORT"]))  # a replacement child takes a while


@app.task
def limited(tag: str, seconds: float) -> str:
    mark("start", tag)
    time.sleep(seconds)
    return tag
"""


@pytest.mark.timeout(120)
def test_a_pool_process_that_died_idle_is_not_given_the_next_job(project: Project) -> None:
    """Killed while it waited for work: its replacement runs the next job (the dead one was
    still queued as free, took the job and held it for ever, its lease renewed)."""
    app, worker = project.app(), project.worker("--pool", "processes", "-c", "1")
    assert _send(app, "slow", "first", 0).result(timeout=30) == "first"
    (child,) = children_of(worker.pid)
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: children_of(worker.pid) - {child} != set(), 30, worker.output)
    assert _send(app, "double", 21).result(timeout=30) == 42


@pytest.mark.timeout(120)
def test_a_time_limit_starts_when_a_pool_process_takes_the_job(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job waiting for a replacement child (one killed at its time limit, the app slow to
    import) is not charged that wait: it runs and succeeds, not ends cancelled."""
    with open(project.root / "jobs_app.py", "a") as f:
        f.write(CHILD_TASKS)
    monkeypatch.setenv("SLOW_CHILD_IMPORT", "3")  # the project's processes inherit it
    app = project.app()
    worker = project.worker("--pool", "processes", "-c", "1")
    limit = app.defaults.merge(timeout=1)  # what a producer that imports the task sends
    first, second = (
        app.enqueue_many([Signature(app, "jobs_app:limited", (tag, s), {}, limit)])[0]
        for tag, s in (("long", 10), ("quick", 0))
    )
    assert second.result(timeout=60) == "quick"
    with pytest.raises(TaskFailed, match="TimeoutError"):
        first.result(timeout=60)
    assert worker.proc.poll() is None
