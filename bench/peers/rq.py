"""RQ: one ``SimpleWorker`` process (no fork per job, one job at a time: RQ has no
in-process concurrency, so the 50-way I/O workloads are n/a)."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis
from rq import Queue

import io_job
import probe
from peers import _env

DIST = "rq"
NA_REASON = {
    "w4": "no concurrency inside one worker process",
    "w4-io": "no concurrency inside one worker process",
    "w5": "no SQLite broker",
}


def noop(i: int) -> int:
    probe.hit()
    return i


def sleep(i: int) -> int:
    began = probe.begin()
    time.sleep(0.01)
    probe.hit(began)
    return i


def latency(t: float) -> float:
    probe.started(t)
    return t


def incr(i: int) -> int:
    return io_job.incr_job(i)


def wait(i: int) -> int:
    return io_job.wait_job(i)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency, "incr": incr, "wait": wait}


def worker_argv(workload: str) -> list[str] | None:
    if workload in NA_REASON:
        return None
    return [
        _env.tool("rq"), "worker", "--url", _env.REDIS_URL,
        "--worker-class", "rq.worker.SimpleWorker", "--logging_level", "WARNING", "default",
    ]  # fmt: skip


class Client:
    def __init__(self) -> None:
        self.queue = Queue("default", connection=Redis.from_url(_env.REDIS_URL))

    def enqueue(self, kind: str, arg: Any) -> Any:
        return self.queue.enqueue(TASKS[kind], arg)

    def enqueue_bulk(self, kind: str, args: list[Any]) -> list[Any]:
        fn = TASKS[kind]
        return self.queue.enqueue_many([Queue.prepare_data(fn, (a,)) for a in args])

    def result(self, handle: Any, timeout: float) -> Any:
        res = handle.latest_result(timeout=int(timeout))
        if res is None:
            raise TimeoutError(f"no result for {handle.id}")
        return res.return_value
