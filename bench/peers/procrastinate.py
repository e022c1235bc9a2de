"""Procrastinate: PostgreSQL queue (psycopg 3, ``SKIP LOCKED``, LISTEN/NOTIFY), one worker
process running ``async def`` tasks at ``--concurrency``.

Procrastinate keeps no return values (a job has a status only) and has no call that waits
for a job: the result check reads each sampled job's status, and W3's enqueue→result is
n/a."""

from __future__ import annotations

import asyncio
from typing import Any

import procrastinate

import io_job
import probe
from peers import _env

DIST = "procrastinate"
NA_REASON = {"w5": "no SQLite broker"}
NA_RESULT_WAIT = "no call that waits for a job, and no return values"
DONE_STATUS = "succeeded"

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_env.POSTGRES_URL))


@app.task(name="noop")
async def noop(i: int) -> int:
    probe.hit()
    return i


@app.task(name="sleep")
async def sleep(i: int) -> int:
    began = probe.begin()
    await asyncio.sleep(0.01)
    probe.hit(began)
    return i


@app.task(name="latency")
async def latency(i: float) -> float:
    probe.started(i)
    return i


@app.task(name="wait")
async def wait(i: int) -> int:
    return await io_job.await_job(i)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency, "wait": wait}


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [
        _env.tool("procrastinate"), "--app", "peers.procrastinate.app", "worker",
        "--concurrency", str(_env.CONCURRENCY),
    ]  # fmt: skip


class Client:
    def open(self) -> None:
        app.open()
        app.schema_manager.apply_schema()  # once per fresh database, untimed

    def enqueue(self, kind: str, arg: Any) -> Any:
        return TASKS[kind].defer(i=arg)

    def enqueue_bulk(self, kind: str, args: list[Any]) -> list[Any]:
        return TASKS[kind].batch_defer(*({"i": a} for a in args))

    def result(self, handle: Any, timeout: float) -> Any:
        return app.job_manager.get_job_status(handle).value

    def close(self) -> None:
        app.close()
