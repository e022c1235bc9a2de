"""taskiq with taskiq-redis: ``RedisStreamBroker`` and ``RedisAsyncResultBackend``; one worker
process (``--workers 1``) with ``--max-async-tasks`` = concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

import io_job
import probe
from peers import _env

DIST = "taskiq"
NA_REASON = {"w5": "no SQLite broker"}

_env.use_uvloop()
# consumer_id="0": the group sees jobs queued before the worker first started (W2).
broker = RedisStreamBroker(url=_env.REDIS_URL, consumer_id="0").with_result_backend(
    RedisAsyncResultBackend(redis_url=_env.REDIS_URL, result_ex_time=600)
)


@broker.task(task_name="noop")
async def noop(i: int) -> int:
    probe.hit()
    return i


@broker.task(task_name="sleep")
async def sleep(i: int) -> int:
    began = probe.begin()
    await asyncio.sleep(0.01)
    probe.hit(began)
    return i


@broker.task(task_name="latency")
async def latency(t: float) -> float:
    probe.started(t)
    return t


@broker.task(task_name="incr")
async def incr(i: int) -> int:
    return await io_job.aincr_job(i)


@broker.task(task_name="wait")
async def wait(i: int) -> int:
    return await io_job.await_job(i)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency, "incr": incr, "wait": wait}


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [
        _env.tool("taskiq"), "worker", "peers.taskiq:broker", "--workers", "1",
        "--max-async-tasks", str(_env.CONCURRENCY), "--log-level", "WARNING",
    ]  # fmt: skip


class Client:
    async def open(self) -> None:
        await broker.startup()

    async def enqueue(self, kind: str, arg: Any) -> Any:
        return await TASKS[kind].kiq(arg)

    async def result(self, handle: Any, timeout: float) -> Any:
        res = await handle.wait_result(timeout=timeout)
        return res.return_value

    async def close(self) -> None:
        await broker.shutdown()
