"""streaq: Redis Streams via coredis, on uvloop; one worker process, ``concurrency`` slots."""

from __future__ import annotations

from typing import Any

import anyio
from streaq import Worker

import io_job
import probe
from peers import _env

DIST = "streaq"
NA_REASON = {"w5": "no SQLite broker"}

_env.use_uvloop()
worker = Worker(
    redis_url=_env.REDIS_URL,
    concurrency=_env.CONCURRENCY,
    anyio_kwargs={"use_uvloop": True},
)


@worker.task(name="noop")
async def noop(i: int) -> int:
    probe.hit()
    return i


@worker.task(name="sleep")
async def sleep(i: int) -> int:
    began = probe.begin()
    await anyio.sleep(0.01)
    probe.hit(began)
    return i


@worker.task(name="latency")
async def latency(t: float) -> float:
    probe.started(t)
    return t


@worker.task(name="incr")
async def incr(i: int) -> int:
    return await io_job.aincr_job(i)


@worker.task(name="wait")
async def wait(i: int) -> int:
    return await io_job.await_job(i)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency, "incr": incr, "wait": wait}


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [_env.tool("streaq"), "run", "peers.streaq:worker"]


class Client:
    async def open(self) -> None:
        await worker.__aenter__()

    async def enqueue(self, kind: str, arg: Any) -> Any:
        return await TASKS[kind].enqueue(arg)

    async def enqueue_bulk(self, kind: str, args: list[Any]) -> list[Any]:
        tasks = [TASKS[kind].enqueue(a) for a in args]
        await worker.enqueue_many(tasks)
        return tasks

    async def result(self, handle: Any, timeout: float) -> Any:
        res = await handle.result(timeout=timeout)
        return res.result

    async def close(self) -> None:
        await worker.__aexit__(None, None, None)
