"""``pool="processes"``: jobs in spawned children that import the app module themselves."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from conveyor import JobCancelled, JobStatus, TaskFailed
from conveyor.worker import Worker

TASKS = """
import asyncio, os, time
from conveyor import Conveyor, current_job

app = Conveyor("memory://")

@app.task
def pid() -> int:
    return os.getpid()

@app.task
def report() -> str:
    current_job().progress(0.7, "in a child")
    time.sleep(0.5)
    return "reported"

@app.task(timeout=0.5)
def hang() -> None:
    time.sleep(60)  # a C call: only a hard limit stops it

@app.task
def sleepy() -> None:
    current_job().progress(0.0, str(os.getpid()))
    time.sleep(60)

@app.task
def crash() -> None:
    os._exit(9)

@app.task
async def coro(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    folder: Path = tmp_path_factory.mktemp("proc")
    (folder / "proc_tasks.py").write_text(textwrap.dedent(TASKS))
    sys.path.insert(0, str(folder))  # spawned children inherit sys.path
    try:
        yield importlib.import_module("proc_tasks")
    finally:
        sys.path.remove(str(folder))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a reaped child's pid is gone; ours are reaped on stop)."""
    return Path(f"/proc/{pid}").exists() if Path("/proc").exists() else _signal0(pid)


def _signal0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def pool(tasks: ModuleType, concurrency: int = 1, **options: float) -> Iterator[Worker]:
    worker = Worker(
        tasks.app, pool="processes", concurrency=concurrency, module="proc_tasks", **options
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(graceful=False)
        thread.join(15)
        assert not thread.is_alive()


def test_jobs_run_in_child_processes(tasks: ModuleType) -> None:
    jobs = [tasks.pid.delay() for _ in range(4)] + [tasks.coro.delay(41)]
    with pool(tasks, concurrency=2):
        pids = {j.result(timeout=30) for j in jobs[:4]}
        assert jobs[4].result(timeout=10) == 42
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert not any(alive(p) for p in pids)  # children end with the worker


def test_progress_travels_from_the_child(tasks: ModuleType) -> None:
    job = tasks.report.delay()
    with pool(tasks):
        deadline = time.monotonic() + 30
        while job.progress[0] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.progress == (0.7, "in a child")
        assert job.result(timeout=10) == "reported"


def test_hard_time_limit_kills_the_child_and_a_new_one_takes_over(tasks: ModuleType) -> None:
    hung = tasks.hang.delay()
    after = tasks.pid.delay()
    with pool(tasks):
        with pytest.raises(TaskFailed) as info:
            hung.result(timeout=30)
        assert after.result(timeout=30) > 0
    assert info.value.remote_type == "builtins.TimeoutError"
    assert "process running it was killed" in info.value.remote_message


def test_a_crashing_child_fails_its_job_only(tasks: ModuleType) -> None:
    crashed = tasks.crash.delay()
    after = tasks.pid.delay()
    with pool(tasks):
        with pytest.raises(TaskFailed) as info:
            crashed.result(timeout=30)
        assert after.result(timeout=30) > 0
    assert info.value.remote_type == "builtins.ChildProcessError"
    assert "exit code 9" in info.value.remote_message


def test_cancel_kills_the_child_running_the_job(tasks: ModuleType) -> None:
    job = tasks.sleepy.delay()
    with pool(tasks, lease=0.6):
        deadline = time.monotonic() + 30
        while job.status is not JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        job.cancel()
        with pytest.raises(JobCancelled):
            job.result(timeout=10)


def test_children_ignore_stop_signals_the_parent_decides(tasks: ModuleType) -> None:
    with pool(tasks):
        first = tasks.pid.delay().result(timeout=30)
        os.kill(first, signal.SIGTERM)  # Heroku signals the whole process group
        os.kill(first, signal.SIGINT)
        time.sleep(0.3)
        assert tasks.pid.delay().result(timeout=10) == first


def test_shutdown_hands_back_jobs_running_in_children(tasks: ModuleType) -> None:
    job = tasks.sleepy.delay()
    worker = Worker(tasks.app, pool="processes", concurrency=1, module="proc_tasks", grace=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while job.progress[1] is None and time.monotonic() < deadline:
        time.sleep(0.02)
    running = int(job.progress[1] or 0)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert job.status is JobStatus.QUEUED
    assert not alive(running)
    tasks.app.broker.purge("default")
