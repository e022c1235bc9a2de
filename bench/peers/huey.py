"""Huey: ``RedisHuey`` (blocking reads), or ``SqliteHuey`` for the embedded workload (W5);
one consumer process with worker threads."""

from __future__ import annotations

import time
from typing import Any

from huey import RedisHuey, SqliteHuey

import io_job
import probe
from peers import _env

DIST = "huey"

if _env.BACKEND == "sqlite":
    huey = SqliteHuey("bench", filename=_env.SQLITE_PATH)
else:
    huey = RedisHuey("bench", url=_env.REDIS_URL)


@huey.task(name="noop")
def noop(i: int) -> int:
    probe.hit()
    return i


@huey.task(name="sleep")
def sleep(i: int) -> int:
    began = probe.begin()
    time.sleep(0.01)
    probe.hit(began)
    return i


@huey.task(name="latency")
def latency(t: float) -> float:
    probe.started(t)
    return t


@huey.task(name="incr")
def incr(i: int) -> int:
    return io_job.incr_job(i)


@huey.task(name="wait")
def wait(i: int) -> int:
    return io_job.wait_job(i)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency, "incr": incr, "wait": wait}


def worker_argv(workload: str) -> list[str] | None:
    return [
        _env.tool("huey_consumer"), "peers.huey.huey", "--workers", str(_env.CONCURRENCY),
        "--worker-type", "thread", "--no-periodic", "--quiet",
    ]  # fmt: skip


class Client:
    def enqueue(self, kind: str, arg: Any) -> Any:
        return TASKS[kind](arg)

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.get(blocking=True, timeout=timeout)
