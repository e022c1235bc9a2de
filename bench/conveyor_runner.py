"""Conveyor, through its ordinary API: ``@app.task``, ``.delay``, ``app.enqueue_many``,
``Job.result``, and the ``conveyor worker`` command with the default thread pool.

``BENCH_CONVEYOR_POOL=async`` runs the worker with ``--pool async`` and ``async def`` tasks
instead (``run.py`` sets it for the workloads whose best Conveyor setting is the async pool,
and for W4-io-async).

``BENCH_LIB`` (set by ``run.py``) names the variant, in the producer and the worker alike:

* ``conveyor``: the default app (events on, no middleware);
* ``conveyor-noevents``: ``Conveyor(events=False)``;
* ``conveyor-prometheus``: ``PrometheusMiddleware`` in the app, and the worker serving it
  with ``--metrics-port 0`` (a free port; nothing scrapes it during the run);
* ``conveyor-classic`` (RabbitMQ only): ``?queue_type=classic``, classic queues instead of
  quorum ones (docs/rabbitmq.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from conveyor import Conveyor

import io_job
import probe
from peers import _env

DIST = "conveyor"
POOL = os.environ.get("BENCH_CONVEYOR_POOL", "threads")
LOG = logging.getLogger("conveyor_runner")  # the worker's module: logged at its level
VARIANT = os.environ.get("BENCH_LIB", "conveyor")
if VARIANT not in ("conveyor", "conveyor-noevents", "conveyor-prometheus", "conveyor-classic"):
    raise SystemExit(f"conveyor_runner: unknown variant BENCH_LIB={VARIANT!r}")


def _options() -> dict[str, Any]:
    if VARIANT == "conveyor-noevents":
        return {"events": False}
    if VARIANT == "conveyor-prometheus":
        from conveyor.contrib.prometheus import PrometheusMiddleware

        return {"middleware": [PrometheusMiddleware()]}
    return {}


if _env.BACKEND == "sqlite":
    app = Conveyor(f"sqlite:///{os.path.abspath(_env.SQLITE_PATH)}", **_options())
elif _env.BACKEND == "postgres":
    app = Conveyor(_env.POSTGRES_URL, **_options())
elif _env.BACKEND == "rabbitmq":  # RabbitMQ delivers, the run's Redis keeps the records
    classic = "?queue_type=classic" if VARIANT == "conveyor-classic" else ""
    app = Conveyor(_env.AMQP_URL + classic, store=_env.REDIS_URL, **_options())
elif VARIANT == "conveyor-classic":
    raise SystemExit("conveyor_runner: conveyor-classic runs on --backend rabbitmq only")
else:
    app = Conveyor(_env.REDIS_URL, **_options())


@app.task(name="noop")
def noop(i: int) -> int:
    probe.hit()
    return i


@app.task(name="logline")
def logline(i: int) -> int:
    """A no-op that logs one INFO line (bench/worker_drain.py --log-line)."""
    LOG.info("job %d ran", i)
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


@app.task(name="aincr")
async def aincr(i: int) -> int:
    return await io_job.aincr_job(i)


@app.task(name="await")
async def await_(i: int) -> int:
    return await io_job.await_job(i)


if POOL == "async":
    TASKS = {"noop": anoop, "sleep": asleep, "latency": alatency, "incr": aincr, "wait": await_}
else:
    TASKS = {"noop": noop, "sleep": sleep, "latency": latency, "incr": incr, "wait": wait}


def worker_argv(workload: str) -> list[str] | None:
    metrics = ["--metrics-port", "0"] if VARIANT == "conveyor-prometheus" else []
    # The console script, as the Procfile line and every peer's worker command run it.
    command = [_env.tool("conveyor")] if os.path.exists(_env.tool("conveyor")) else [
        sys.executable, "-m", "conveyor"]  # fmt: skip
    return [
        *command, "worker", "conveyor_runner",
        "--concurrency", str(_env.CONCURRENCY), "--pool", POOL, *metrics,
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
