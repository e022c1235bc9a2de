"""Celery: Redis broker and Redis result backend, thread pool in one worker process."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

import probe
from peers import _env

DIST = "celery"
NA_REASON = {"w5": "no SQLite broker"}

app = Celery("bench", broker=_env.REDIS_URL, backend=_env.REDIS_URL)
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


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


TASKS = {"noop": noop, "sleep": sleep, "latency": latency}


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [
        _env.tool("celery"), "-A", "peers.celery", "worker", "--pool", "threads",
        "--concurrency", str(_env.CONCURRENCY), "--loglevel", "WARNING",
        "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


class Client:
    def enqueue(self, kind: str, arg: Any) -> Any:
        return TASKS[kind].delay(arg)

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout=timeout)
