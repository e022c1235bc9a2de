"""Celery: Redis broker (RabbitMQ on ``--backend rabbitmq``, its default ``amqp://`` set-up
through kombu and py-amqp) and Redis result backend, thread pool in one worker process."""

from __future__ import annotations

import itertools
import time
from typing import Any

from celery import Celery

import io_job
import probe
from peers import _env

DIST = "celery"
NA_REASON = {"w5": "no SQLite broker"}

BROKER_URL = _env.AMQP_URL if _env.BACKEND == "rabbitmq" else _env.REDIS_URL
app = Celery("bench", broker=BROKER_URL, backend=_env.REDIS_URL)
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


@app.task(name="incr")
def incr(i: int) -> int:
    return io_job.incr_job(i)


@app.task(name="wait")
def wait(i: int) -> int:
    return io_job.wait_job(i)


_NODES = itertools.count(1)  # a node name per worker process, when a run starts several

TASKS = {"noop": noop, "sleep": sleep, "latency": latency, "incr": incr, "wait": wait}


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [
        _env.tool("celery"), "-A", "peers.celery", "worker", "--pool", "threads",
        "--concurrency", str(_env.CONCURRENCY), "--loglevel", "WARNING",
        "--without-heartbeat", "--without-gossip", "--without-mingle",
        "--hostname", f"bench{next(_NODES)}@%h",
    ]  # fmt: skip


class Client:
    def enqueue(self, kind: str, arg: Any) -> Any:
        return TASKS[kind].delay(arg)

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout=timeout)
