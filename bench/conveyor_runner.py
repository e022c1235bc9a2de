"""Conveyor, through its ordinary API: ``@app.task``, ``.delay``, ``app.enqueue_many``,
``Job.result``, and the ``conveyor worker`` command with the default thread pool.

``BENCH_CONVEYOR_POOL=async`` runs the worker with ``--pool async`` and ``async def`` tasks
instead (for exploring; the reported run uses the default).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from conveyor import Conveyor

import probe
from peers import _env

DIST = "conveyor"
POOL = os.environ.get("BENCH_CONVEYOR_POOL", "threads")

if _env.BACKEND == "sqlite":
    app = Conveyor(f"sqlite:///{os.path.abspath(_env.SQLITE_PATH)}")
else:
    app = Conveyor(_env.REDIS_URL)


@app.task(name="noop")
def noop(i: int) -> int:
    probe.hit()
    return i


@app.task(name="sleep")
def sleep(i: int) -> int:
    began = probe.begin()
    time.sleep(0.01)
    probe.hit(began)
    return i


@app.task(name="latency")
def latency(t: float) -> float:
    probe.started(t)
    return t


@app.task(name="anoop")
async def anoop(i: int) -> int:
    probe.hit()
    return i


@app.task(name="asleep")
async def asleep(i: int) -> int:
    began = probe.begin()
    await asyncio.sleep(0.01)
    probe.hit(began)
    return i


@app.task(name="alatency")
async def alatency(t: float) -> float:
    probe.started(t)
    return t


if POOL == "async":
    TASKS = {"noop": anoop, "sleep": asleep, "latency": alatency}
else:
    TASKS = {"noop": noop, "sleep": sleep, "latency": latency}


def worker_argv(workload: str) -> list[str] | None:
    return [
        sys.executable, "-m", "conveyor", "worker", "conveyor_runner",
        "--concurrency", str(_env.CONCURRENCY), "--pool", POOL,
    ]  # fmt: skip


class Client:
    def enqueue(self, kind: str, arg: Any) -> Any:
        return TASKS[kind].delay(arg)

    def enqueue_bulk(self, kind: str, args: list[Any]) -> list[Any]:
        task = TASKS[kind]
        return app.enqueue_many([task.s(a) for a in args])

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout=timeout)

    def close(self) -> None:
        app.close()
