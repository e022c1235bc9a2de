"""An idle worker runs a lone tiny job in its consumer's thread and writes a lone result from
the thread that ran it (fewer thread wake-ups between a delivery and its result); the job is
still cancelled, time-limited and handed back like any other."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from conveyor import Conveyor, Job, JobCancelled, JobStatus, TaskFailed
from conveyor.worker import Worker, _consumer

from .test_worker_lifecycle import Recording

CONSUMER = "consumer-under-test"


@pytest.fixture(autouse=True)
def lenient_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    # A loaded test machine must not make a trivial run look slow.
    monkeypatch.setattr(_consumer, "QUICK", 0.5)


@contextmanager
def consuming(worker: Worker) -> Iterator[None]:
    """Run ``worker`` in a thread named ``CONSUMER`` (``run`` off the main thread consumes in
    the calling thread)."""
    thread = threading.Thread(target=worker.run, name=CONSUMER, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop(graceful=False)
        thread.join(10)
        assert not thread.is_alive()


def warm_up(run: Callable[[], str], consumer: str = CONSUMER) -> None:
    """Run quick jobs one at a time until one runs in the consumer's thread (``consumer``:
    its name; ``conveyor-worker`` when ``run`` is called from the main thread)."""
    for _ in range(20):
        if run() == consumer:
            return
    pytest.fail("a lone quick job never ran in the consumer's thread")


def test_a_lone_quick_job_runs_in_the_consumer_thread() -> None:
    app = Conveyor("memory://")
    threads: list[str] = []

    @app.task
    def where() -> str:
        threads.append(threading.current_thread().name)
        return threading.current_thread().name

    with consuming(Worker(app, concurrency=8)):
        warm_up(lambda: where.delay().result(timeout=30))
        jobs = app.enqueue_many([where.s() for _ in range(30)])
        names = [j.result(timeout=30) for j in jobs]
    assert threads[0].startswith("conveyor-job-")  # a task not yet known quick: the pool
    assert CONSUMER not in names[:16]  # the first fetch (8 slots, 8 buffered): the pool


def test_a_quick_task_turned_slow_is_cancelled_in_the_consumer_thread() -> None:
    app = Conveyor("memory://")  # real time: the keeper renews (and hears of the cancel)
    started = threading.Event()
    slow_in: list[str] = []

    @app.task
    def step(forever: bool) -> str:
        if forever:
            slow_in.append(threading.current_thread().name)
            started.set()
            while True:
                time.sleep(0.01)
        return threading.current_thread().name

    with consuming(Worker(app, lease=0.3)):
        warm_up(lambda: step.delay(False).result(timeout=30))
        job = step.delay(True)
        assert started.wait(30)
        assert job.cancel()
        with pytest.raises(JobCancelled):
            job.result(timeout=30)
        assert job.status is JobStatus.CANCELLED
        assert slow_in == [CONSUMER]
        assert step.delay(False).result(timeout=30)  # the worker goes on


def test_a_quick_task_turned_slow_meets_its_time_limit_in_the_consumer_thread() -> None:
    app = Conveyor("memory://")

    slow_in: list[str] = []

    @app.task(timeout=0.3)
    def step(seconds: float) -> str:
        if seconds:
            slow_in.append(threading.current_thread().name)
        for _ in range(int(seconds / 0.01)):
            time.sleep(0.01)
        return threading.current_thread().name

    with consuming(Worker(app)):
        warm_up(lambda: step.delay(0).result(timeout=30))
        job = step.delay(10)
        with pytest.raises(TaskFailed) as info:
            job.result(timeout=30)
    assert info.value.remote_type == "conveyor._errors.SoftTimeLimit"
    assert slow_in == [CONSUMER]


def test_a_lone_result_is_written_by_the_thread_that_ran_the_job() -> None:
    broker = Recording()
    app = Conveyor(broker=broker)
    writers: list[str] = []
    finish = broker.finish

    def recorded(outcomes: object, events: object = ()) -> list[bool]:
        writers.append(threading.current_thread().name)
        return finish(outcomes, events)  # type: ignore[arg-type]

    broker.finish = recorded  # type: ignore[method-assign]

    @app.task
    def one() -> int:
        return 1

    with consuming(Worker(app)):
        for _ in range(5):
            assert one.delay().result(timeout=30) == 1
            time.sleep(0.05)  # the finisher is idle again
    assert "conveyor-finish" not in writers
    assert len(writers) == 5


def test_a_result_is_left_to_the_finisher_while_other_jobs_are_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing else runs while the second job of a fetch is still being dispatched, but it is
    # held: a job thread that wrote its own result then held up the jobs behind it.
    broker = Recording()
    app = Conveyor(broker=broker)
    writers: list[str] = []
    written = threading.Event()
    finish = broker.finish

    def recorded(outcomes: object, events: object = ()) -> list[bool]:
        writers.append(threading.current_thread().name)
        result = finish(outcomes, events)  # type: ignore[arg-type]
        written.set()
        return result

    broker.finish = recorded  # type: ignore[method-assign]
    vet = _consumer.Consumer._vet

    def vet_the_second_once_the_first_is_written(self: Any, attempt: Any) -> None:
        vet(self, attempt)
        if attempt.message.args == (2,):
            written.wait(10)

    monkeypatch.setattr(_consumer.Consumer, "_vet", vet_the_second_once_the_first_is_written)

    @app.task
    def one(i: int) -> int:
        return i

    jobs = [one.delay(1), one.delay(2)]
    with consuming(Worker(app, concurrency=2)):
        assert [job.result(timeout=30) for job in jobs] == [1, 2]
    assert writers[0] == "conveyor-finish"


def test_a_tasks_tiny_runs_are_counted_up_to_quick_runs_and_a_slow_one_resets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Conveyor("memory://")

    @app.task
    def tiny() -> None: ...

    @app.task
    def sometimes(seconds: float) -> None:
        time.sleep(seconds)

    monkeypatch.setattr(_consumer, "QUICK", 0.05)
    worker = Worker(app, concurrency=1)
    quick = worker._consumer._quick
    for _ in range(_consumer.QUICK_RUNS + 3):
        tiny.delay()
        sometimes.delay(0)
        worker.drain(timeout=30)
    assert quick[tiny.name] == quick[sometimes.name] == _consumer.QUICK_RUNS  # not counted on
    sometimes.delay(0.1)
    worker.drain(timeout=30)
    assert quick[sometimes.name] == 0 and quick[tiny.name] == _consumer.QUICK_RUNS
    sometimes.delay(0.1)
    worker.drain(timeout=30)
    assert quick[sometimes.name] == 0
    sometimes.delay(0)
    worker.drain(timeout=30)
    assert quick[sometimes.name] == 1


@pytest.mark.parametrize("stuck", [False, True], ids=["in-python", "in-a-c-call"])
def test_a_stop_keeps_its_grace_while_a_job_runs_in_the_consumer_thread(
    stuck: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """``run`` from the main thread (``conveyor worker``), SIGTERM while a quick task turned
    slow runs in the consumer's thread: the worker stops once the grace has run out and hands
    the job back, whether the interrupt lands (Python code) or not (a C call). It waited for
    the job's return: for ever, while that stayed in the C call."""
    app = Conveyor("memory://")
    started, release = threading.Event(), threading.Event()
    ran_in: list[str] = []

    @app.task
    def step(slow: bool) -> str:
        if slow:
            ran_in.append(threading.current_thread().name)
            started.set()
            if stuck:
                release.wait(60)  # a lock's wait: no async exception lands in it
            while not release.is_set():
                time.sleep(0.01)
        return threading.current_thread().name

    worker = Worker(app, grace=0.5)
    sent: list[Job[str]] = []

    def producer() -> None:
        warm_up(lambda: step.delay(False).result(timeout=30), "conveyor-worker")
        job = step.delay(True)
        sent.append(job)
        if started.wait(30):
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    caplog.set_level(logging.INFO, "conveyor.worker")
    try:
        worker.run()  # returns within the grace, the job still in the consumer's thread
        returned = time.monotonic()
        assert ran_in == ["conveyor-worker"]
        (job,) = sent
        assert job.status is JobStatus.QUEUED  # handed back
        assert "runs in the worker's own thread past the stop's grace" in caplog.text
    finally:
        release.set()
    thread.join(10)
    for session in threading.enumerate():
        if session.name == "conveyor-worker":  # once the job returns, it ends, running nothing
            session.join(10)
            assert not session.is_alive()
    assert time.monotonic() - returned < 10


def test_a_job_in_the_consumer_thread_that_ends_within_the_grace_is_not_taken_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The takeover started at the first signal, with a warning that the grace was out.
    app = Conveyor("memory://")
    started = threading.Event()

    @app.task
    def step(seconds: float) -> str:
        started.set()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.01)
        return threading.current_thread().name

    worker = Worker(app, grace=5)
    jobs: list[Job[str]] = []

    def producer() -> None:
        warm_up(lambda: step.delay(0).result(timeout=30), "conveyor-worker")
        started.clear()
        jobs.append(step.delay(0.5))
        if started.wait(30):
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=producer, daemon=True).start()
    caplog.set_level(logging.INFO, "conveyor.worker")
    worker.run()
    (job,) = jobs
    assert job.result(timeout=0) == "conveyor-worker"  # ran here, and finished
    assert "past the stop's grace" not in caplog.text
