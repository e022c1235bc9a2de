"""arq: default settings (it polls the queue every 0.5 s), ``max_jobs`` = concurrency."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings

import io_job
import probe
from peers import _env

DIST = "arq"
NA_REASON = {"w5": "no SQLite broker"}

_env.use_uvloop()
REDIS = RedisSettings.from_dsn(_env.REDIS_URL)


async def noop(ctx: dict[str, Any], i: int) -> int:
    probe.hit()
    return i


async def sleep(ctx: dict[str, Any], i: int) -> int:
    began = probe.begin()
    await asyncio.sleep(0.01)
    probe.hit(began)
    return i


async def latency(ctx: dict[str, Any], t: float) -> float:
    probe.started(t)
    return t


async def incr(ctx: dict[str, Any], i: int) -> int:
    return await io_job.aincr_job(i)


async def wait(ctx: dict[str, Any], i: int) -> int:
    return await io_job.await_job(i)


class WorkerSettings:
    functions: ClassVar = [noop, sleep, latency, incr, wait]
    redis_settings = REDIS
    max_jobs = _env.CONCURRENCY


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [_env.tool("arq"), "peers.arq.WorkerSettings"]


class Client:
    async def open(self) -> None:
        self.pool = await create_pool(REDIS)

    async def enqueue(self, kind: str, arg: Any) -> Any:
        return await self.pool.enqueue_job(kind, arg)

    async def result(self, handle: Any, timeout: float) -> Any:
        return await handle.result(timeout=timeout)

    async def close(self) -> None:
        await self.pool.aclose()
