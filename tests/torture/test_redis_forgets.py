"""A Redis that forgets under a running worker: ``FLUSHALL``, and a restart without
persistence, on a private server.

Each time the worker says so once, at ERROR (``conveyor.redis``: what happened and how many
jobs its queues held at the look before), whatever else notices the loss (refused
renewals and outcomes, heartbeats); the jobs it was running end with a refused outcome
each, and new jobs run as usual. Nothing more is said while nothing more is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from conveyor import Conveyor, JobStatus
from conveyor.worker import Worker
from redis_server import RedisServer, unique_prefix

from .workers import running, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

QUEUE = "default"
HELD = 2  # jobs running (blocked) when Redis forgets
WAITING = 3  # jobs queued behind them


def _lines(caplog: pytest.LogCaptureFixture, name: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno == level]


def _forget_under_a_worker(
    server: RedisServer, caplog: pytest.LogCaptureFixture, forget: Callable[[], None]
) -> str:
    """Run a worker on HELD running jobs and WAITING queued ones, ``forget``, check what
    the worker says and does, and return its one ERROR line."""
    app = Conveyor(server.url, prefix=unique_prefix())
    release = threading.Event()
    started: list[str] = []

    @app.task(name="hold", queue=QUEUE)
    def hold(tag: str) -> str:
        started.append(tag)
        release.wait(30)
        return tag

    @app.task(name="quick", queue=QUEUE)
    def quick(n: int) -> int:
        return n

    # A lease of 3 s: renewals every second find the loss first.
    worker = Worker(app, [QUEUE], concurrency=HELD, lease=3.0, pool="threads")
    try:
        with caplog.at_level(logging.INFO), running(worker, graceful=False):
            held = [hold.delay(f"h{i}") for i in range(HELD + WAITING)]
            wait_for(lambda: len(started) == HELD, 10)
            enqueued = app.clock.time()
            wait_for(lambda: any(w.seen_at > enqueued for w in app.broker.workers()), 10)
            forget()
            wait_for(lambda: bool(_lines(caplog, "conveyor.redis", logging.ERROR)), 10)
            assert app.broker.get([j.id for j in held]) == [None] * len(held)

            release.set()  # the held jobs end, and their outcomes are refused
            refused = "outcome was refused"
            wait_for(lambda: sum(refused in m for m in _said(caplog)) >= HELD, 10, caplog.text)
            jobs = [quick.delay(n) for n in range(5)]  # new jobs run as usual
            assert [j.result(timeout=10) for j in jobs] == list(range(5))
            records = app.broker.get([j.id for j in jobs])
            assert [r.status if r else None for r in records] == [JobStatus.SUCCEEDED] * 5
            time.sleep(6)  # one more heartbeat: nothing more is lost, nothing more said
        (line,) = _lines(caplog, "conveyor.redis", logging.ERROR)
        warnings = _lines(caplog, "conveyor.worker", logging.WARNING)
        # Per job the worker held (running or buffered) at most a lost lease and a refused
        # outcome: what it says is bounded by what was lost, not by how long it runs.
        assert len(warnings) <= 2 * (HELD + WAITING), warnings
        assert f"{HELD + WAITING} job(s) were queued, scheduled or running in {QUEUE}" in line
        assert "New jobs run as usual" in line and "appendonly yes" in line
        return line
    finally:
        release.set()
        app.close()


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_flushall_under_a_running_worker_is_reported_once_and_new_jobs_run(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    def flush() -> None:
        client = fresh_redis_server.client()
        try:
            client.flushall()
        finally:
            client.close()

    line = _forget_under_a_worker(fresh_redis_server, caplog, flush)
    assert line.startswith(
        f"the Redis at redis://127.0.0.1:{fresh_redis_server.port}/0 was emptied "
        "(the database was flushed, or its keys were deleted or evicted): "
    ), line


def test_a_restart_without_persistence_under_a_running_worker_is_reported_once(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    line = _forget_under_a_worker(
        fresh_redis_server, caplog, lambda: fresh_redis_server.restart(empty=True)
    )
    assert line.startswith(
        f"the Redis at redis://127.0.0.1:{fresh_redis_server.port}/0 restarted empty "
        "(without persistence): "
    ), line
