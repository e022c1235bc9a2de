"""Redis memory per job: queued, then finished with its result kept.

On a private redis-server, enqueues N jobs with a 200-byte argument through
``app.enqueue_many`` (batches of 1,000) and reads ``INFO memory`` before and after; then
fetches and finishes them all (results kept, as by default) and reads it again. Prints
bytes per job for both states (the figures in docs/redis.md, "Sizing and trimming").

Run: .venv/bin/python bench/memory_per_job.py [--n 50000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import redis
from conveyor import Conveyor
from conveyor._message import JobStatus
from conveyor.brokers import Finish

from redis_server import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    n = parser.parse_args().n
    server = RedisServer()
    server.start()
    try:
        client = redis.Redis(port=server.port)
        app = Conveyor(server.url)

        @app.task(name="t")
        def t(s: str) -> None:
            return None

        def used() -> int:
            return int(client.info("memory")["used_memory"])

        before = used()
        for _ in range(0, n, 1000):
            app.enqueue_many([t.s("x" * 200) for _ in range(1000)])
        queued = used()
        done = 0
        while done < n:
            got = app.broker.fetch(["default"], "c", 500, 60, 0)
            app.broker.finish([Finish(d, JobStatus.SUCCEEDED, b"\x90") for d in got])
            done += len(got)
        finished = used()
        print(
            f"{n:,} jobs: queued {(queued - before) / n:,.0f} B/job, "
            f"finished (result kept) {(finished - before) / n:,.0f} B/job"
        )
        app.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
