"""The worker drives workflows, rate limits and periodic schedules (through the public API)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conveyor import Conveyor, JobStatus, TaskFailed, chain, chord, group
from conveyor.testing import FakeClock, drain
from conveyor.worker import Worker


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("memory://")


def test_chain_group_and_chord_run_to_completion(app: Conveyor) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    flow = chain(add.s(1, 2), add.s(10), add.s(100)).delay()
    members = group(add.s(i, i) for i in range(4)).delay()
    summed = chord(group(add.s(i, 1) for i in range(3)), total.s()).delay()
    drain(app, timeout=30)
    assert flow.result(timeout=30) == 113
    assert members.result(timeout=30) == [0, 2, 4, 6]
    assert summed.result(timeout=30) == 6


def test_a_failed_step_fails_the_rest_of_the_chain(app: Conveyor) -> None:
    ran: list[str] = []

    @app.task
    def boom(x: int) -> int:
        raise ValueError(f"bad {x}")

    @app.task
    def after(x: int) -> int:
        ran.append("after")
        return x

    job = chain(boom.s(1), after.s()).delay()
    drain(app, timeout=30)
    with pytest.raises(TaskFailed, match="bad 1"):
        job.result(timeout=30)
    assert ran == []


def test_rate_limit_postpones_without_counting_attempts() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task(rate="2/m")
    def ping(i: int) -> int:
        return i

    jobs = [ping.delay(i) for i in range(5)]
    drain(app, advance=False, timeout=30)
    statuses = Counter(j.status for j in jobs)
    assert statuses[JobStatus.SUCCEEDED] == 2
    assert statuses[JobStatus.SCHEDULED] == 3
    for _ in range(10):
        clock.advance(61)
        drain(app, advance=False, timeout=30)
        if all(j.status is JobStatus.SUCCEEDED for j in jobs):
            break
    assert [j.result() for j in jobs] == [0, 1, 2, 3, 4]


def test_two_workers_run_each_periodic_tick_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    runs: list[float] = []
    lock = threading.Lock()
    workers = []
    for _ in range(2):
        app = Conveyor(url)

        @app.periodic(every=dt.timedelta(seconds=1), name="tick")
        def tick() -> None:
            with lock:
                runs.append(time.time())

        workers.append(Worker(app, concurrency=2, lease=5, grace=1))
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    time.sleep(3.5)
    for w in workers:
        w.stop()
    for t in threads:
        t.join(10)
    assert 2 <= len(runs) <= 4  # about one per second, never one per worker
    seconds = [int(r) for r in runs]
    assert len(set(seconds)) >= len(seconds) - 1  # no second ran twice (allowing a boundary)
