"""A worker never runs more jobs at once than its concurrency, in any pool, however the
broker hands out lease tokens.

Regression: with ``--pool async -c 50`` a worker on Redis once ran 201 jobs at once. The
Redis adapter then handed out one token per fetched batch, and the worker tracked its
deliveries by token, so a whole batch counted as one held delivery: every fetch saw almost
all slots free and fetched another batch. The thread pool hid it (its threads are the
limit); the async pool starts every coroutine it is given. ``BatchTokens`` below hands
tokens out the same way; the Redis run is in ``tests/integration/test_worker_concurrency_redis.py``.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from conveyor import Conveyor
from conveyor._message import Delivery
from conveyor.brokers.memory import MemoryBroker
from conveyor.worker import Worker


class BatchTokens(MemoryBroker):
    """One token per fetched batch: unique per job only, as an adapter may hand out."""

    def fetch(
        self, queues: Sequence[str], consumer: str, count: int, lease: float, block: float
    ) -> list[Delivery]:
        got = super().fetch(queues, consumer, count, lease, block)
        token = secrets.token_hex(4)
        with self._cond:
            for d in got:
                self._s.jobs[d.id].token = token
        return [msgspec.structs.replace(d, token=token) for d in got]


class Gauge:
    """How many jobs run at once, and the most there ever were."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.runs = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.runs += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def run_concurrently(app: Conveyor, pool: str, kind: str, concurrency: int, n: int) -> Gauge:
    """Queue ``n`` short jobs, drain them with one worker; check that at most
    ``concurrency`` ran at once and each ran once."""
    gauge = Gauge()

    @app.task(name="sync_wait")
    def sync_wait(i: int) -> int:
        gauge.enter()
        try:
            time.sleep(0.005)
        finally:
            gauge.leave()
        return i

    @app.task(name="async_wait")
    async def async_wait(i: int) -> int:
        gauge.enter()
        try:
            await asyncio.sleep(0.005)
        finally:
            gauge.leave()
        return i

    task = async_wait if kind == "async" else sync_wait
    jobs = app.enqueue_many([task.s(i) for i in range(n)])
    worker = Worker(app, pool=pool, concurrency=concurrency, grace=0.0)
    finished = worker.drain(timeout=50)
    assert 1 <= gauge.most <= concurrency, (
        f"{gauge.most} jobs ran at once with concurrency {concurrency}"
    )
    assert finished == n
    assert [j.result(timeout=30) for j in jobs] == list(range(n))
    assert gauge.runs == n
    return gauge


CASES = [("async", "async"), ("async", "sync"), ("threads", "sync"), ("threads", "async")]


@pytest.mark.parametrize(("pool", "kind"), CASES)
@pytest.mark.parametrize("tokens", ["per-job", "per-batch"])
def test_jobs_running_at_once_never_exceed_concurrency(pool: str, kind: str, tokens: str) -> None:
    broker = BatchTokens() if tokens == "per-batch" else MemoryBroker()
    app = Conveyor(broker=broker)
    run_concurrently(app, pool, kind, concurrency=5, n=120)


def test_a_fetchs_first_job_starts_while_its_later_jobs_wait_on_their_rate_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rate limit is checked in the broker (two round trips per job): the first job of a
    fetch starts while the later ones are checked, not after the whole fetch's checks."""
    app = Conveyor("memory://")
    began: list[float] = []

    @app.task(rate="1000/s")
    def job(i: int) -> None:
        began.append(time.monotonic())

    for i in range(4):
        job.delay(i)
    kv = app.broker.kv
    incr = kv.incr
    asked: list[float] = []

    def slow_incr(*args: Any, **kwargs: Any) -> int:
        asked.append(time.monotonic())
        time.sleep(0.05)  # a round trip to a distant broker
        return incr(*args, **kwargs)

    monkeypatch.setattr(kv, "incr", slow_incr)
    Worker(app, concurrency=4).drain(timeout=10)
    assert len(began) == 4 and len(asked) == 4
    assert min(began) < asked[-1], "the first job waited for every job's rate limit"
