"""Dramatiq: Redis broker (``RabbitmqBroker`` on ``--backend rabbitmq``, pika), Results
middleware on Redis, one process with a thread pool."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

import io_job
import probe
from peers import _env

DIST = "dramatiq"
NA_REASON = {"w5": "no SQLite broker"}

broker: dramatiq.Broker
if _env.BACKEND == "rabbitmq":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=_env.AMQP_URL)
else:
    broker = RedisBroker(url=_env.REDIS_URL)
broker.add_middleware(Results(backend=RedisBackend(url=_env.REDIS_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", store_results=True)
def noop(i: int) -> int:
    probe.hit()
    return i


@dramatiq.actor(actor_name="sleep", store_results=True)
def sleep(i: int) -> int:
    began = probe.begin()
    time.sleep(0.01)
    probe.hit(began)
    return i


@dramatiq.actor(actor_name="latency", store_results=True)
def latency(t: float) -> float:
    probe.started(t)
    return t


@dramatiq.actor(actor_name="incr", store_results=True)
def incr(i: int) -> int:
    return io_job.incr_job(i)


@dramatiq.actor(actor_name="wait", store_results=True)
def wait(i: int) -> int:
    return io_job.wait_job(i)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency, "incr": incr, "wait": wait}


def worker_argv(workload: str) -> list[str] | None:
    if workload == "w5":
        return None
    return [
        _env.tool("dramatiq"), "peers.dramatiq", "--processes", "1",
        "--threads", str(_env.CONCURRENCY),
    ]  # fmt: skip


class Client:
    def enqueue(self, kind: str, arg: Any) -> Any:
        return TASKS[kind].send(arg)

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.get_result(block=True, timeout=int(timeout * 1000))
