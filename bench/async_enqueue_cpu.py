"""Client CPU per job of ``enqueue_async`` (``task.delay_async()``, sequential) against
``asyncio.to_thread`` of the sync enqueue, on a private redis-server. CPU time of this
process (``time.process_time``), not wall time: on a loaded shared machine the wall time
of a round trip swings by 2x from run to run, the CPU a call costs much less.

    nice .venv/bin/python bench/async_enqueue_cpu.py                  # this checkout
    PYTHONPATH=/tmp/old/src nice .venv/bin/python bench/async_enqueue_cpu.py   # another copy
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conveyor import Conveyor
from conveyor.brokers import Broker

from redis_server import private_redis

N = 3000


def _noop() -> None: ...


def main() -> None:
    with private_redis() as server:
        app = Conveyor(server.url)
        task = app.task(name="bench:noop")(_noop)

        async def native() -> None:
            for _ in range(N):
                await task.delay_async()

        async def threaded() -> None:
            for _ in range(N):
                await Broker._enqueue_async(app.broker, [app.envelope(task.s())], ())  # to_thread

        rows: dict[str, list[float]] = {"enqueue_async": [], "to_thread(enqueue)": []}
        for _ in range(5):
            for name, run in (("enqueue_async", native), ("to_thread(enqueue)", threaded)):
                t0 = time.process_time()
                asyncio.run(run())
                rows[name].append((time.process_time() - t0) / N * 1e6)
        for name, values in rows.items():
            print(f"{name:20s} {statistics.median(values):6.1f} µs CPU per job (median of 5)")


if __name__ == "__main__":
    main()
