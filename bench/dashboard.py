"""Server-side time of the dashboard's pages on a big backlog: 100,000 jobs over 10 queues
and every status, on Redis (a private redis-server) and on SQLite (a temporary file).

Each request goes through the ASGI application in process (no socket, no browser), made
with ``refresh=0`` so the overview reads the broker on every request instead of sharing a
sample: what one request costs when its figures are taken. The event log is full (10,000
job events of the last 15 minutes), and the overview's first request copies it (shown on
its own as "first overview"). The figures in docs/benchmarks.md and docs/dashboard.md.

Run: .venv/bin/python bench/dashboard.py [--jobs 100000] [--requests 30] [--broker redis|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from conveyor import Conveyor, JobStatus
from conveyor._events import job_event
from conveyor._message import Envelope, Message, Outcome, RemoteError, new_job_id
from conveyor.brokers import Finish
from conveyor.dashboard import asgi_app

from redis_server import private_redis

QUEUES = [f"queue{i}" for i in range(10)]
# Of every 100 jobs of a queue, how many end in each status.
SHARES = {"queued": 40, "scheduled": 10, "running": 5, "succeeded": 25, "failed": 10,
          "dead": 5, "cancelled": 5}  # fmt: skip
BATCH = 1000
TRACEBACK = "Traceback (most recent call last):\n" + '  File "app.py", line 1, in f\n' * 12


def seed(app: Conveyor, jobs: int) -> None:
    """``jobs`` jobs, spread evenly over the queues and by ``SHARES`` over the statuses,
    written through the port as a producer and workers would."""
    broker, codec, now = app.broker, app.codec, time.time()
    per_queue = jobs // len(QUEUES)
    for queue in QUEUES:
        counts = {s: per_queue * n // 100 for s, n in SHARES.items()}
        later = counts["scheduled"]
        total = sum(counts.values())
        for start in range(0, total, BATCH):
            envelopes = []
            for i in range(start, min(start + BATCH, total)):
                message = Message(
                    new_job_id(), "billing.tasks:charge", [i, f"customer-{i}"],
                    {"currency": "EUR"}, queue, enqueued_at=now,
                )  # fmt: skip
                eta = now + 3600 if i < later else None
                envelopes.append(
                    Envelope(message.id, queue, codec.encode_message(message), eta=eta)
                )
            broker.enqueue(envelopes)
        ended = [(JobStatus.SUCCEEDED, counts["succeeded"]), (JobStatus.FAILED, counts["failed"]),
                 (JobStatus.DEAD, counts["dead"])]  # fmt: skip
        for status, wanted in ended:
            left = wanted
            while left > 0:
                got = broker.fetch([queue], "bench", min(left, 500), lease=3600, block=0)
                broker.finish([_finish(app, d, status) for d in got])
                left -= len(got)
        broker.fetch([queue], "bench", counts["running"], lease=3600, block=0)
        for entry in broker.entries(JobStatus.QUEUED, queue, counts["cancelled"]):
            broker.cancel(entry.id)
    events = [
        job_event("job.succeeded", now - 900 + 900 * i / 10_000, new_job_id(),
                  "billing.tasks:charge", QUEUES[i % 10], duration=0.01)
        for i in range(10_000)
    ]  # fmt: skip
    for start in range(0, len(events), BATCH):
        broker.publish(events[start : start + BATCH])


def _finish(app: Conveyor, delivery: object, status: JobStatus) -> Finish:
    if status is JobStatus.SUCCEEDED:
        result = app.codec.encode_outcome(Outcome(value={"charged": 42}))
        return Finish(delivery, status, result)  # type: ignore[arg-type]
    error = RemoteError("billing.errors.CardDeclined", "card declined", TRACEBACK)
    result = app.codec.encode_outcome(Outcome(error=error))
    return Finish(delivery, status, result, reason="billing.errors.CardDeclined: card declined")  # type: ignore[arg-type]


def measure(app: Conveyor, requests: int) -> list[tuple[str, float, float]]:
    """(page, median ms, p95 ms) per page."""
    web = asgi_app(app, refresh=0)
    failed = app.broker.entries(JobStatus.FAILED, None, 1)[0].id
    pages = [
        ("overview", "/api/overview"),
        ("list: failed, every queue, page 1", "/api/jobs/failed"),
        ("list: queued, one queue, page 1", "/api/jobs/queued?queue=queue3"),
        ("list: succeeded, every queue, page 21", "/api/jobs/succeeded?offset=1000"),
        ("list: failed of one task, page 1", "/api/jobs/failed?task=billing.tasks:charge"),
        ("job page (failed, with traceback)", f"/api/job/{failed}"),
    ]

    async def run() -> list[tuple[str, float, float]]:
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            started = time.perf_counter()
            (await client.get("/api/overview")).raise_for_status()
            first = (time.perf_counter() - started) * 1000
            rows = [("first overview (copies the event log)", first, first)]
            for name, path in pages:
                times = []
                for _ in range(requests):
                    started = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                times.sort()
                p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                rows.append((name, statistics.median(times), p95))
            return rows

    return asyncio.run(run())


def port_calls(app: Conveyor, requests: int) -> list[tuple[str, float, float]]:
    """The broker calls behind the overview, alone."""
    failed = JobStatus.FAILED
    calls: list[tuple[str, Callable[[], object]]] = [
        ("port: stats()", app.broker.stats),
        ("port: entries(failed, all queues, 51)", lambda: app.broker.entries(failed, None, 51)),
        (
            "port: entries(succeeded, all queues, 51, offset 1000)",
            lambda: app.broker.entries(JobStatus.SUCCEEDED, None, 51, 1000),
        ),
    ]
    rows = []
    for name, call in calls:
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        rows.append((name, statistics.median(times), times[round(0.95 * (len(times) - 1))]))
    return rows


@contextmanager
def broker(kind: str) -> Iterator[Conveyor]:
    if kind == "redis":
        with private_redis() as server, Conveyor(server.url, prefix="benchdash") as app:
            yield app
    else:
        with (
            tempfile.TemporaryDirectory() as folder,
            Conveyor(f"sqlite:///{folder}/jobs.db") as app,
        ):
            yield app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--broker", choices=["redis", "sqlite"], action="append")
    args = parser.parse_args()
    print(f"{args.jobs:,} jobs over {len(QUEUES)} queues; {args.requests} requests per page")
    print("| broker | page | median ms | p95 ms |\n|---|---|---:|---:|")
    for kind in args.broker or ["redis", "sqlite"]:
        with broker(kind) as app:
            started = time.perf_counter()
            seed(app, args.jobs)
            seeded = time.perf_counter() - started
            counts = {s: sum(getattr(q, s) for q in app.broker.stats()) for s in SHARES}
            print(f"<!-- {kind}: seeded in {seeded:.0f} s: {counts} -->", file=sys.stderr)
            for name, median, p95 in [
                *measure(app, args.requests),
                *port_calls(app, args.requests),
            ]:
                print(f"| {kind} | {name} | {median:.1f} | {p95:.1f} |", flush=True)


if __name__ == "__main__":
    main()
