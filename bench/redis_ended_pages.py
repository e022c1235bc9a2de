"""Redis: a page of ended jobs over every queue, read by rank (``entries`` now: ended.lua)
against the scan it replaced (each queue's newest ``offset + limit`` ids from its index,
every one of them read and sorted), in one process on the same 100,000 jobs of
bench/dashboard.py, at a few offsets. Both answer the same page where a status's jobs share
one result TTL. The figures in docs/benchmarks.md ("Dashboard").

Run: .venv/bin/python bench/redis_ended_pages.py [--jobs 100000] [--requests 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from conveyor import Conveyor, JobStatus
from conveyor.brokers.redis._admin import _ENTRY_FIELDS
from conveyor.brokers.redis._core import text

from dashboard import seed
from redis_server import private_redis

LIMIT = 51  # what a dashboard list page asks for


def scan(app: Conveyor, status: JobStatus, offset: int) -> list[str]:
    """The page as the adapter read it before: ``offset + LIMIT`` ids of every queue."""
    broker: Any = app.broker
    queues, want, now = broker._known_queues(), offset + LIMIT, broker._now()
    pipe = broker._client.pipeline(transaction=False)
    for q in queues:
        key = broker._keys.queue(q, status.value)
        pipe.zrevrangebyscore(key, "+inf", f"({now}", start=0, num=want)
    ids = [text(i) for found in pipe.execute() for i in found]
    pipe = broker._client.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(broker._keys.job(i), _ENTRY_FIELDS)
    rows = pipe.execute()
    broker._payloads([row[:5] for row in rows])
    ordered = sorted(
        ((int(row[6] or 0), i) for i, row in zip(ids, rows, strict=True)), reverse=True
    )
    return [i for _, i in ordered[offset : offset + LIMIT]]


def median_ms(call: Callable[[], object], requests: int) -> float:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    succeeded = JobStatus.SUCCEEDED
    with private_redis() as server, Conveyor(server.url, prefix="benchpages") as app:
        seed(app, args.jobs)
        first = [e.id for e in app.broker.entries(succeeded, None, LIMIT)]
        assert scan(app, succeeded, 0) == first, "the two reads disagree on the first page"
        print("| offset | scan (before) ms | by rank (now) ms | scan / by rank |")
        print("|---:|---:|---:|---:|")
        for offset in (0, 1000, 5000, 20_000):
            before = median_ms(lambda o=offset: scan(app, succeeded, o), args.requests)
            now = median_ms(
                lambda o=offset: app.broker.entries(succeeded, None, LIMIT, o), args.requests
            )
            print(f"| {offset:,} | {before:.1f} | {now:.1f} | {before / now:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
