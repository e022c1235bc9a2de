"""Per-call cost of the producer paths on Redis: sync, native asyncio, asyncio through a
thread, and a batch. The figures behind "sync core, async producer path" in
docs/architecture.md.

Run: .venv/bin/python bench/api_cost.py   (starts a private redis-server)
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conveyor import Conveyor
from conveyor.brokers import Broker

from redis_server import RedisServer

N = 3000


def _noop() -> None: ...


def main() -> None:
    server = RedisServer()
    server.start()
    try:
        app = Conveyor(server.url)
        task = app.task(name="bench:noop")(_noop)
        rows: dict[str, float] = {}

        started = time.perf_counter()
        for _ in range(N):
            task.delay()
        rows["sync .delay()"] = time.perf_counter() - started

        async def native() -> float:
            t0 = time.perf_counter()
            for _ in range(N):
                await task.delay_async()
            return time.perf_counter() - t0

        rows["async .delay_async() (redis.asyncio)"] = asyncio.run(native())

        async def threaded() -> float:
            t0 = time.perf_counter()
            for _ in range(N):
                envelope = app.envelope(task.s())
                await Broker._enqueue_async(app.broker, [envelope], ())  # the port's default
            return time.perf_counter() - t0

        rows["async via asyncio.to_thread"] = asyncio.run(threaded())

        started = time.perf_counter()
        app.enqueue_many(task.s() for _ in range(N))
        rows["enqueue_many (one batch)"] = time.perf_counter() - started

        base = rows["sync .delay()"]
        for name, seconds in rows.items():
            per_call = seconds / N * 1e6
            print(f"{name:40s} {per_call:7.1f} us per job  ({seconds / base:.2f}x sync)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
