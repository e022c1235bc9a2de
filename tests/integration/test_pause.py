"""Pause and resume with a real ``Worker`` on each broker (SQLite, Redis): a paused queue is
not drained, not even by a worker started later, and is drained soon after resume, also by
a worker blocked on that queue alone. (That a resume wakes a blocked fetch at once is
checked per broker by the conformance suite, and for the worker, against minute-long
fetches, in ``tests/unit/test_operations.py``: here the fetch's 1 s block, or SQLite's
0.5 s look, would also pick the jobs up within seconds.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from brokers import Target, by_name
from conftest import wait_for
from conveyor import Conveyor, JobStatus
from conveyor.worker import Worker

pytestmark = pytest.mark.slow


@pytest.fixture
def target(tmp_path: Path, broker_kind: str, request: pytest.FixtureRequest) -> Target:
    """A fresh broker of each kind."""
    return by_name(broker_kind).target(request, tmp_path)


@contextmanager
def running(worker: Worker) -> Iterator[None]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop(graceful=False)
        thread.join(30)
        assert not thread.is_alive()


def _app(target: Target, ran: list[int]) -> Conveyor:
    """A worker's app: its own connection, so it learns of the pause from the broker."""
    app = Conveyor(target.url, **target.app_options())

    @app.task(name="report", queue="reports")
    def report(n: int) -> int:
        ran.append(n)
        return n

    @app.task(name="ping", queue="default")
    def ping() -> str:
        return "pong"

    return app


@pytest.mark.timeout(60)
@pytest.mark.parametrize("queues", [["reports", "default"], ["reports"]], ids=["two", "alone"])
def test_a_paused_queue_is_not_drained_until_resumed(target: Target, queues: list[str]) -> None:
    admin = Conveyor(target.url, **target.app_options())
    admin.pause("reports")
    ran: list[int] = []
    first = _app(target, ran)
    jobs = [first.registry["report"].delay(i) for i in range(5)]

    with running(Worker(first, queues, concurrency=2, lease=5)):
        if "default" in queues:  # the worker is up and fetching
            assert first.registry["ping"].delay().result(timeout=10) == "pong"
        else:
            wait_for(lambda: len(admin.broker.workers()) == 1, 10)
        time.sleep(0.5)
    assert ran == []

    second = _app(target, ran)  # a worker started later finds the queue paused
    with running(Worker(second, queues, concurrency=2, lease=5)):
        wait_for(lambda: len(admin.broker.workers()) == 1, 10)
        time.sleep(1.2)  # more than a fetch's block: it came back and blocked again
        assert ran == []
        [stats] = [s for s in admin.broker.stats() if s.queue == "reports"]
        assert (stats.queued, stats.paused) == (5, True)

        resumed = time.monotonic()
        admin.resume("reports")
        assert [j.result(timeout=30) for j in jobs] == list(range(5))
        assert time.monotonic() - resumed < 10  # soon (the wake itself: see the docstring)
    assert sorted(ran) == list(range(5))
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}
    for app in (admin, first, second):
        app.close()
