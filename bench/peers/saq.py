"""SAQ: its Redis queue (BLMOVE, pub/sub for job updates), or its Postgres queue (psycopg,
``SKIP LOCKED``, LISTEN/NOTIFY) when the run's backend is PostgreSQL; one worker process."""

from __future__ import annotations

import asyncio
from typing import Any

from saq import Queue

import io_job
import probe
from peers import _env

DIST = "saq"
NA_REASON = {"w5": "no SQLite broker"}

_env.use_uvloop()
queue = Queue.from_url(_env.POSTGRES_URL if _env.BACKEND == "postgres" else _env.REDIS_URL)


async def noop(ctx: dict[str, Any], *, i: int) -> int:
    probe.hit()
    return i


async def sleep(ctx: dict[str, Any], *, i: int) -> int:
    began = probe.begin()
    await asyncio.sleep(0.01)
    probe.hit(began)
    return i


async def latency(ctx: dict[str, Any], *, i: float) -> float:
    probe.started(i)
    return i


async def incr(ctx: dict[str, Any], *, i: int) -> int:
    return await io_job.aincr_job(i)


async def wait(ctx: dict[str, Any], *, i: int) -> int:
    return await io_job.await_job(i)


settings = {
    "queue": queue,
    "functions": [noop, sleep, latency, incr, wait],
    "concurrency": _env.CONCURRENCY,
}


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [_env.tool("saq"), "peers.saq.settings", "--quiet"]


class Client:
    async def open(self) -> None:
        await queue.connect()

    async def enqueue(self, kind: str, arg: Any) -> Any:
        return await queue.enqueue(kind, i=arg)

    async def result(self, handle: Any, timeout: float) -> Any:
        await handle.refresh(until_complete=timeout)
        return handle.result

    async def close(self) -> None:
        await queue.disconnect()
