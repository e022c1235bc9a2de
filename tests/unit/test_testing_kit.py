"""``conveyor.testing``: what users write their own tests with."""

from __future__ import annotations

import pytest

from conveyor import Conveyor, JobStatus, TaskFailed
from conveyor.testing import FakeClock, drain


def test_drain_runs_every_queue_and_leaves_scheduled_jobs() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(queue="other")
    def boom() -> None:
        raise ValueError("no")

    ok, bad = add.delay(1, 2), boom.delay()
    later = add.options(delay=60).delay(2, 2)
    assert drain(app) == 2
    assert ok.result() == 3
    with pytest.raises(TaskFailed, match="ValueError: no"):
        bad.result()
    assert later.status is JobStatus.SCHEDULED
    clock.advance(61)
    assert drain(app) == 1
    assert later.result() == 4


def test_drain_with_nothing_to_do_returns_at_once() -> None:
    assert drain(Conveyor("memory://"), ["default"], timeout=5) == 0
