"""pgqueuer: PostgreSQL queue (asyncpg, ``SKIP LOCKED``, LISTEN/NOTIFY), one ``pgq run``
process with ``--max-concurrent-tasks``.

pgqueuer keeps no return values: a job ends as a status in its log table. The caller waits
with its ``CompletionWatcher`` (LISTEN/NOTIFY), and the result check compares that status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries
from pgqueuer.core.completion import CompletionWatcher

import io_job
import probe
from peers import _env

DIST = "pgqueuer"
NA_REASON = {"w5": "no SQLite broker"}
DONE_STATUS = "successful"

_env.use_uvloop()


def _arg(job: Job) -> Any:
    return json.loads(job.payload or b"null")


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    """The worker's factory (``pgq run peers.pgqueuer:create_pgqueuer``)."""
    conn = await asyncpg.connect(_env.POSTGRES_URL)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        probe.hit()

    @pgq.entrypoint("sleep")
    async def sleep(job: Job) -> None:
        began = probe.begin()
        await asyncio.sleep(0.01)
        probe.hit(began)

    @pgq.entrypoint("latency")
    async def latency(job: Job) -> None:
        probe.started(_arg(job))

    @pgq.entrypoint("wait")
    async def wait(job: Job) -> None:
        await io_job.await_job(_arg(job))

    try:
        yield pgq
    finally:
        await conn.close()


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [
        _env.tool("pgq"), "run", "peers.pgqueuer:create_pgqueuer",
        "--max-concurrent-tasks", str(_env.CONCURRENCY),
    ]  # fmt: skip


class Client:
    async def open(self) -> None:
        self.conn = await asyncpg.connect(_env.POSTGRES_URL)
        self.driver = AsyncpgDriver(self.conn)
        self.queries = Queries(self.driver)
        await self.queries.install()  # once per fresh database, untimed
        # the watcher listens on a connection of its own
        self.watch_conn = await asyncpg.connect(_env.POSTGRES_URL)
        watch_driver = AsyncpgDriver(self.watch_conn)
        watcher = CompletionWatcher(watch_driver, queries=Queries(watch_driver))
        self.watcher = await watcher.__aenter__()

    async def enqueue(self, kind: str, arg: Any) -> Any:
        (job_id,) = await self.queries.enqueue(kind, json.dumps(arg).encode())
        return job_id

    async def enqueue_bulk(self, kind: str, args: list[Any]) -> list[Any]:
        payloads: list[bytes | None] = [json.dumps(a).encode() for a in args]
        return await self.queries.enqueue([kind] * len(args), payloads, [0] * len(args))

    async def result(self, handle: Any, timeout: float) -> Any:
        return await asyncio.wait_for(self.watcher.wait_for(handle), timeout)

    async def close(self) -> None:
        await self.watcher.__aexit__(None, None, None)
        await self.watch_conn.close()
        await self.conn.close()
