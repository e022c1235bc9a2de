"""``Job[R]``: the future contract, driven here by finishing deliveries through the port."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from conveyor import Conveyor, JobCancelled, JobDead, JobStatus, TaskFailed
from conveyor._message import Outcome, RemoteError
from conveyor.brokers import Finish


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("memory://")


def _finish(app: Conveyor, status: JobStatus, outcome: Outcome, reason: str = "") -> None:
    delivery = app.broker.fetch(["default"], "t", 1, 30, 1.0)[0]
    result = app.codec.encode_outcome(outcome)
    assert app.broker.finish([Finish(delivery, status, result, reason=reason)]) == [True]


def test_result_and_status(app: Conveyor) -> None:
    @app.task
    def f() -> int:
        return 1

    job = f.delay()
    assert not job.done()
    with pytest.raises(TimeoutError):
        job.result(timeout=0.01)
    _finish(app, JobStatus.SUCCEEDED, Outcome(value={"a": [1]}))
    assert job.done() and job.status is JobStatus.SUCCEEDED
    assert job.result(timeout=30) == {"a": [1]}
    assert job.exception() is None


def test_failure_carries_the_remote_error(app: Conveyor) -> None:
    @app.task
    def f() -> None: ...

    job = f.delay()
    _finish(app, JobStatus.FAILED, Outcome(error=RemoteError("app.Boom", "no", "Traceback...")))
    with pytest.raises(TaskFailed) as info:
        job.result()
    err = info.value
    assert (err.remote_type, err.remote_message, err.remote_traceback) == (
        "app.Boom",
        "no",
        "Traceback...",
    )
    assert isinstance(job.exception(), TaskFailed)


def test_dead_and_cancelled(app: Conveyor) -> None:
    @app.task
    def f() -> None: ...

    dead = f.delay()
    _finish(app, JobStatus.DEAD, Outcome(reason="unknown task"), reason="unknown task")
    with pytest.raises(JobDead, match="unknown task"):
        dead.result()
    queued = f.delay()
    assert queued.cancel()
    assert queued.status is JobStatus.CANCELLED
    with pytest.raises(JobCancelled):
        queued.result(timeout=30)


def test_waiting_caller_wakes_promptly(app: Conveyor) -> None:
    @app.task
    def f() -> None: ...

    job = f.delay()
    threading.Timer(0.05, _finish, (app, JobStatus.SUCCEEDED, Outcome(value=7))).start()
    started = time.perf_counter()
    assert job.result(timeout=40) == 7
    assert time.perf_counter() - started < 20  # woken by the finish, not by the timeout


def test_done_callback(app: Conveyor) -> None:
    @app.task
    def f() -> None: ...

    job = f.delay()
    seen = threading.Event()
    job.add_done_callback(lambda j: seen.set())
    _finish(app, JobStatus.SUCCEEDED, Outcome(value=None))
    assert seen.wait(30)
    later = threading.Event()
    job.add_done_callback(lambda j: later.set())  # already done: called at once
    assert later.is_set()


async def test_await_job(app: Conveyor) -> None:
    @app.task
    def f() -> None: ...

    job = f.delay()
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, _finish, app, JobStatus.SUCCEEDED, Outcome(value="ok"))
    assert await job == "ok"


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_a_cancelled_await_frees_its_thread(url: str, tmp_path: Path) -> None:
    """On a broker whose wait runs in a thread, ``asyncio.wait_for(job, t)`` cancels the
    await but cannot stop the thread: it waits in slices, so it ends soon after, and the
    loop's executor (which ``asyncio.run`` waits for on exit) with it."""
    url = url if url == "memory://" else f"sqlite:///{tmp_path}/jobs.db"
    app = Conveyor(url)

    @app.task
    def never_run() -> None: ...

    async def main() -> None:
        job = await never_run.delay_async()  # no worker: it stays queued
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(job, 0.05)

    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    runner.start()
    runner.join(30)  # a slice is 1 s; a thread waiting for the job would hold it for ever
    assert not runner.is_alive()
    app.close()
