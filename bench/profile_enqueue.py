"""Where an enqueue's time goes on Redis: wall time, client CPU and server time per job, for
``task.delay()`` (W1), ``app.enqueue_many`` in batches of 1,000 (W1b), the broker call alone
on envelopes built beforehand, the envelope alone, and the raw ``XADD`` limits beside them.

Wall time on a shared machine is noisy, so the cases run interleaved, several rounds, and
the table shows the median and the best round; client CPU (``time.process_time``) and
server time (``INFO commandstats``: the usec Redis spent in the commands, by the wall clock)
are much steadier and say which side a change helped; steadier still on a loaded machine,
the server's main-thread CPU (``INFO cpu``, as bench/script_cost.py reads it: it counts
reading each request and writing its reply too).

Run: .venv/bin/python bench/profile_enqueue.py [--n 5000] [--rounds 5] [--full-log]
(``--full-log``: each case starts with the event log at its cap, as a producer's steady
state is, so every event's append trims; by default it starts empty, as in bench/run.py)
(starts a private redis-server; py-spy on top: ``py-spy record -o out.svg -- <this>``)
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

from conveyor import Conveyor

from raw import PIPE_BATCH, payload
from redis_server import RedisServer, main_thread_cpu_usec

BATCH = 1000  # W1b's batch size


def _noop(i: int) -> int:
    return i


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="jobs per case and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--full-log", action="store_true", help="start each case with a full event log")
    opts = p.parse_args()
    n = opts.n
    server = RedisServer()
    server.start()
    try:
        app = Conveyor(server.url)
        task = app.task(name="bench:noop")(_noop)
        broker: Any = app.broker
        client = broker._client  # the broker's own connection pool, for the raw rows
        task.delay(0)  # scripts loaded, connection open

        def server_usec() -> int:
            stats = client.info("commandstats")
            return sum(
                int(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_xadd")
            )  # EXEC counts its own

        raw_fields = [{"m": payload(i)} for i in range(n)]

        def w1() -> None:
            for i in range(n):
                task.delay(i)

        def w1b() -> None:
            for at in range(0, n, BATCH):
                app.enqueue_many([task.s(i) for i in range(at, min(at + BATCH, n))])

        built: list[Any] = []  # envelopes for the broker-only row, built outside the clock

        def broker_each() -> None:
            for env in built:
                broker.enqueue([env])

        def envelopes() -> None:
            for i in range(n):
                app.envelope(task.s(i))

        def raw_xadd() -> None:
            for f in raw_fields:
                client.xadd("raw:jobs", f)

        def raw_pipelined() -> None:
            for at in range(0, n, PIPE_BATCH):
                pipe = client.pipeline(transaction=False)
                for f in raw_fields[at : at + PIPE_BATCH]:
                    pipe.xadd("raw:jobs", f)
                pipe.execute()

        cases: dict[str, Callable[[], None]] = {
            "W1 task.delay()": w1,
            "broker.enqueue([env]) only": broker_each,
            "app.envelope() only": envelopes,
            "raw XADD, one per round trip": raw_xadd,
            "W1b enqueue_many (1,000/batch)": w1b,
            "raw XADD pipelined (1,000)": raw_pipelined,
        }
        rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in cases}
        for _ in range(opts.rounds):
            for name, fn in cases.items():
                if fn is broker_each:
                    built[:] = [app.envelope(task.s(i)) for i in range(n)]
                client.flushall()
                if opts.full_log:
                    fill_log(broker)
                rows[name].append(measure(fn, n, client, server_usec))
        report(rows, n, opts.rounds)
    finally:
        server.stop()


def measure(
    fn: Callable[[], None], n: int, client: Any, server_usec: Callable[[], int]
) -> tuple[float, float, float, float]:
    """Per job: wall, client CPU, server (commandstats) and server main-thread CPU µs."""
    before, main0 = server_usec(), main_thread_cpu_usec(client)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    main = (main_thread_cpu_usec(client) - main0) / n
    return wall / n * 1e6, cpu / n * 1e6, (server_usec() - before) / n, main


def fill_log(broker: Any) -> None:
    """The event log at its cap, an event per entry, as lone enqueues leave it (entries of
    64 events, as a finish's, each fill a node of their own, which a trim drops whole)."""
    event = b'{"type":"job.enqueued","job_id":"0193a1b2c3d4e5f6a7b8c9d0e1","queue":"default"}'
    for _ in range(broker.events_kept):
        broker.publish([event])


def report(rows: dict[str, list[tuple[float, float, float, float]]], n: int, rounds: int) -> None:
    print(f"{n:,} jobs per case, {rounds} rounds; microseconds per job\n")
    print("| case | wall median | wall best | client CPU | server | server CPU | jobs/s (median) |")
    print("|---|---|---|---|---|---|---|")
    for name, vals in rows.items():
        wall = statistics.median(v[0] for v in vals)
        best = min(v[0] for v in vals)
        cpu = statistics.median(v[1] for v in vals)
        srv = statistics.median(v[2] for v in vals)
        main = statistics.median(v[3] for v in vals)
        print(
            f"| {name} | {wall:.1f} | {best:.1f} | {cpu:.1f} | {srv:.1f} | {main:.1f} "
            f"| {1e6 / wall:,.0f} |"
        )


if __name__ == "__main__":
    main()
