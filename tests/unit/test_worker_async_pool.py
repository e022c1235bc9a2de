"""The async pool: sync jobs on its few threads keep their whole time limit, and a stopping
worker lets its event loop clean up (cancelled tasks' ``finally``, async generators, the
default executor) before it closes the loop.

The apps here run on the system clock: time limits fire on their own, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from conveyor import Conveyor, JobStatus, TaskFailed
from conveyor.worker import Worker
from conveyor.worker._pools import ASYNC_POOL_THREADS

from .test_worker_lifecycle import background

WAIT = 30.0  # seconds: only a broken worker takes this long


@pytest.fixture
def app() -> Iterator[Conveyor]:
    with Conveyor("memory://") as a:
        yield a


def stop(worker: Worker, thread: threading.Thread) -> float:
    """Stop the worker; how long until its ``run`` returned."""
    asked = time.monotonic()
    worker.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    return time.monotonic() - asked


# -- sync jobs waiting for a thread ----------------------------------------------------------


def test_sync_jobs_waiting_for_a_thread_keep_their_whole_time_limit(app: Conveyor) -> None:
    # Regression: the limit started when the job got its run slot; the two jobs beyond the
    # pool's threads waited 1.5 s for one, ran 1.5 s, and failed with SoftTimeLimit at 2.2 s
    # (margins of 0.7 s either way, for a loaded machine).
    @app.task(timeout=2.2)
    def work(i: int) -> int:
        time.sleep(1.5)
        return i

    n = ASYNC_POOL_THREADS + 2
    jobs = [work.delay(i) for i in range(n)]
    with background(Worker(app, pool="async", concurrency=n, grace=0)):
        assert [job.result(timeout=WAIT) for job in jobs] == list(range(n))


def test_a_sync_job_that_waited_for_a_thread_is_still_stopped_at_its_limit(
    app: Conveyor,
) -> None:
    started: list[float] = []

    @app.task()
    def hold() -> None:
        time.sleep(0.8)

    @app.task(timeout=0.5)
    def endless() -> None:
        started.append(time.monotonic())
        for _ in range(500):  # 10 s, unless the limit interrupts it
            time.sleep(0.02)

    holds = [hold.delay() for _ in range(ASYNC_POOL_THREADS)]  # every thread, for 0.8 s
    job = endless.delay()
    with background(Worker(app, pool="async", concurrency=ASYNC_POOL_THREADS + 1, grace=0)):
        with pytest.raises(TaskFailed) as info:
            job.result(timeout=WAIT)
        ended = time.monotonic()
        for held in holds:
            held.result(timeout=WAIT)
    assert info.value.remote_type == "conveyor._errors.SoftTimeLimit"
    assert started, "the limit ran out while it waited for a thread: it never ran"
    assert 0.5 <= ended - started[0] < 5.0  # its 0.5 s counted from when it began, and held


# -- the event loop on stop ------------------------------------------------------------------


def test_a_stopped_async_job_finishes_what_it_awaits_in_finally(app: Conveyor) -> None:
    # Regression: the loop was stopped right after the cancel, and closed with the task
    # pending ("Task was destroyed but it is pending!"): the cleanup never finished.
    began = threading.Event()
    log: list[str] = []

    @app.task()
    async def hold() -> None:
        began.set()
        try:
            await asyncio.sleep(30)
        finally:
            log.append("cleanup started")
            await asyncio.sleep(0.05)  # an `await conn.close()`
            log.append("cleanup finished")

    job = hold.delay()
    worker = Worker(app, pool="async", concurrency=2, grace=0.2)
    with background(worker) as thread:
        assert began.wait(WAIT)
        stop(worker, thread)
    assert log == ["cleanup started", "cleanup finished"]
    assert job.status is JobStatus.QUEUED  # handed back, for another worker


def test_stopping_closes_open_async_generators_and_the_default_executor(
    app: Conveyor,
) -> None:
    began = threading.Event()
    log: list[str] = []
    kept: list[AsyncIterator[int]] = []  # alive after the job: only the loop can close it

    async def ticks() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
                await asyncio.sleep(0.01)
        finally:
            log.append("generator closed")

    def blocking() -> None:
        time.sleep(0.5)
        log.append("executor call finished")

    @app.task()
    async def hold() -> None:
        gen = ticks()
        kept.append(gen)
        await anext(gen)
        began.set()
        await asyncio.to_thread(blocking)

    hold.delay()
    worker = Worker(app, pool="async", concurrency=2, grace=0)
    with background(worker) as thread:
        assert began.wait(WAIT)
        stop(worker, thread)
    assert sorted(log) == ["executor call finished", "generator closed"]


def test_a_task_that_ignores_its_cancellation_does_not_hold_up_the_stop(
    app: Conveyor,
) -> None:
    began = threading.Event()

    @app.task()
    async def stubborn() -> None:
        began.set()
        while True:
            with contextlib.suppress(asyncio.CancelledError):  # swallowed, every time
                await asyncio.sleep(30)

    stubborn.delay()
    worker = Worker(app, pool="async", concurrency=2, grace=0.2)
    with background(worker) as thread:
        assert began.wait(WAIT)
        took = stop(worker, thread)
    assert took < 3.0  # the grace, then a bounded wait for the loop's cleanup
    # The task never ended: its coroutine is closed when collected. Collected here, not
    # whenever the collector next runs (inside a later test's import, CPython 3.11's AST
    # constructor then failed with "recursion depth mismatch").
    del worker
    gc.collect()
