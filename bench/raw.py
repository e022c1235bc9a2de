"""The Redis limit, measured with a plain redis-py client (hiredis parser) in one process.

- W1: ``XADD`` one entry at a time, a ~150-byte JSON job payload per entry, encoded before
  the clock starts (so this is the client+server limit, with no encoding at all);
- W1b: the same ``XADD`` pipelined, 1,000 per round trip (the bulk batch size for everyone);
- W2: entries queued beforehand, then ``XREADGROUP COUNT 100`` followed by one pipelined
  ``XACK`` + ``XDEL`` of the batch, until the stream is drained (no task is run).
- W4-io: no queue and no Redis: the same 2,000 requests to the delay server that the jobs
  make (``io_job.wait``), from 50 bare threads, each taking the next until none is left;
  W4-io-async: from 50 asyncio tasks (``io_job.await_``). What 50 waiters reach on this
  machine with this delay server, beside the ideal 5,000/s that assumes both are free.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from typing import Any

import redis

import io_job

DIST = "redis"
STREAM = "raw:jobs"
GROUP = "raw"
READ_BATCH = 100
PIPE_BATCH = 1000
NA_REASON = dict.fromkeys(("w3", "w4", "w5"), "no worker: a Redis limit, not a task queue")


def payload(i: int) -> bytes:
    return json.dumps(
        {
            "id": uuid.uuid4().hex,
            "task": "bench.tasks:noop",
            "args": [i],
            "kwargs": {},
            "queue": "default",
            "enqueued_at": time.time(),
        },
        separators=(",", ":"),
    ).encode()


def xadd_each(r: redis.Redis, n: int) -> float:
    fields = [{"m": payload(i)} for i in range(n)]  # encoded before the clock starts
    t0 = time.perf_counter()
    for f in fields:
        r.xadd(STREAM, f)
    return n / (time.perf_counter() - t0)


def xadd_pipelined(r: redis.Redis, n: int) -> float:
    fields = [{"m": payload(i)} for i in range(n)]
    t0 = time.perf_counter()
    for start in range(0, n, PIPE_BATCH):
        pipe = r.pipeline(transaction=False)
        for f in fields[start : start + PIPE_BATCH]:
            pipe.xadd(STREAM, f)
        pipe.execute()
    return n / (time.perf_counter() - t0)


def read_ack_delete(r: redis.Redis, n: int) -> float:
    xadd_pipelined(r, n)
    r.xgroup_create(STREAM, GROUP, id="0")
    done = 0
    t0 = time.perf_counter()
    while done < n:
        reply = r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=READ_BATCH, block=1000)
        if not reply:
            raise RuntimeError(f"stream ran dry after {done} of {n} entries")
        ids = [entry_id for entry_id, _fields in reply[0][1]]
        pipe = r.pipeline(transaction=False)
        pipe.xack(STREAM, GROUP, *ids)
        pipe.xdel(STREAM, *ids)
        pipe.execute()
        done += len(ids)
    return n / (time.perf_counter() - t0)


def bare_threads(n: int, slots: int) -> float:
    """W4-io without a queue: ``slots`` threads share ``n`` requests to the delay server."""
    left, lock = [n], threading.Lock()

    def waiter() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            io_job.wait()

    threads = [threading.Thread(target=waiter) for _ in range(slots)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


def bare_tasks(n: int, slots: int) -> float:
    """W4-io-async without a queue: ``slots`` asyncio tasks share ``n`` requests."""
    left = [n]

    async def waiter() -> None:
        while left[0]:
            left[0] -= 1
            await io_job.await_()

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(waiter() for _ in range(slots)))
        return n / (time.perf_counter() - t0)

    found: list[float] = []  # run_custom is called inside the driver's own event loop
    runner = threading.Thread(target=lambda: found.append(asyncio.run(main())))
    runner.start()
    runner.join()
    return found[0]


def run_custom(workload: str, cfg: dict[str, Any]) -> dict[str, Any]:
    if workload in NA_REASON:
        return {"na": NA_REASON[workload]}
    if workload in ("w4-io", "w4-io-async"):
        bare = bare_threads if workload == "w4-io" else bare_tasks
        return {"rate": bare(cfg["n"], int(os.environ["BENCH_CONCURRENCY"]))}
    r = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    try:
        fn = {"w1": xadd_each, "w1b": xadd_pipelined, "w2": read_ack_delete}[workload]
        return {"rate": fn(r, cfg["n"])}
    finally:
        r.close()
