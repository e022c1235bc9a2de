"""The server's CPU per job of a worker's fetch and finish, source trees alternated.

    .venv/bin/python bench/pg_fn_cost.py --tree old=/tmp/base/src --tree new=src --pairs 4

No worker and no threads: one process per tree and pair (``PYTHONPATH`` puts the tree's
``src`` first) enqueues ``--jobs`` no-op jobs on a fresh database of a private server
(``pg_server.py``), then claims them ``--batch`` at a time through the broker and finishes
each batch at once (one event per job given with the finish, one with each outcome, as a
worker sends), and sums, around each call, the CPU time the server's processes (the
postmaster's children: the backend, the WAL writer, ...) spent, from
``/proc/<pid>/schedstat`` (nanoseconds; time spent waiting for a CPU is not in it). So
the figures are the functions' own, without a drain's timing (how full each batch is).
With ``--append N`` it times ``append_events`` alone instead, ``--jobs`` calls of N events
like a worker's (``job.started`` and ``job.succeeded`` in turn, JSON of ~185 bytes, each
its own job id: what a finish of N / 2 jobs appends), in µs per call.
Printed: each run, then each tree's medians and their ratio to the first tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from pg_server import server_cpu  # noqa: E402


def child(url: str, n: int, batch: int, data: str) -> dict[str, float]:
    """One tree's run (in that tree's interpreter): µs of server CPU per job, by call."""
    from conveyor import Conveyor
    from conveyor._message import JobStatus
    from conveyor.brokers._port import Finish

    app = Conveyor(url)

    @app.task(name="noop")
    def noop(i: int) -> int:
        return i

    for at in range(0, n, 1000):
        app.enqueue_many([noop.s(i) for i in range(at, min(n, at + 1000))])
    broker = app.broker
    event = b"e" * 70
    spent = {"fetch": 0.0, "finish": 0.0}
    done = 0
    while done < n:
        before = server_cpu(data)
        got, _ = broker._claim(["default"], batch, 60.0)  # type: ignore[attr-defined]
        claimed = server_cpu(data)
        if not got:
            break
        outcomes = [Finish(d, JobStatus.SUCCEEDED, b"r" * 20, event=event) for d in got]
        assert all(broker._finish(outcomes, [event] * len(got)))  # type: ignore[attr-defined]
        spent["fetch"] += claimed - before
        spent["finish"] += server_cpu(data) - claimed
        done += len(got)
    app.close()
    return {k: v * 1e6 / done for k, v in spent.items()}


def child_append(url: str, calls: int, n: int, data: str) -> dict[str, float]:
    """``append_events`` alone (in that tree's interpreter): µs of server CPU per call."""
    import psycopg
    from conveyor._events import Event, encode
    from conveyor.brokers.postgres import PostgresBroker

    PostgresBroker(url).close()  # migrated
    spent = 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(calls):
            events = [
                encode(Event("job.succeeded" if i % 2 else "job.started", time.time(),
                             job_id=uuid.uuid4().hex, task="noop", queue="default",
                             worker_id="host-1234-0a1b2c", attempt=0,
                             duration=0.000123 if i % 2 else None))
                for i in range(n)
            ]  # fmt: skip
            before = server_cpu(data)
            conn.execute("SELECT conveyor.append_events(%b::bytea[], 10000)", (events,))
            spent += server_cpu(data) - before
    return {"append": spent * 1e6 / calls}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--child", nargs=5, metavar=("URL", "N", "BATCH", "DATA", "APPEND"), help=argparse.SUPPRESS
    )
    p.add_argument("--tree", action="append", default=[], metavar="NAME=SRC")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=80, help="jobs per fetch and finish")
    p.add_argument(
        "--append", type=int, default=0, metavar="N", help="time append_events: N events a call"
    )
    args = p.parse_args()
    if args.child:
        url, n, batch, data, append = args.child
        if int(append):
            print(json.dumps(child_append(url, int(n), int(append), data)))
        else:
            print(json.dumps(child(url, int(n), int(batch), data)))
        return 0
    from pg_server import private_postgres

    unit = f"call of {args.append} events" if args.append else "job"
    trees = [t.split("=", 1) for t in args.tree] or [["new", os.path.join(HERE, "..", "src")]]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    with private_postgres() as server:
        print(server.describe(), flush=True)
        for pair in range(args.pairs):
            for name, src in trees[pair % len(trees) :] + trees[: pair % len(trees)]:
                url = server.fresh_database("fn_cost")
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(src), HERE]))
                command = [sys.executable, __file__, "--child", url, str(args.jobs),
                           str(args.batch), server.data, str(args.append)]  # fmt: skip
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[name].append(r)
                cells = "  ".join(f"{key} {value:6.1f}" for key, value in r.items())
                print(f"pair {pair} {name:<6} {cells} µs of server CPU per {unit}", flush=True)
    first = trees[0][0]
    print(f"\nmedians of {args.pairs} pairs, µs of server CPU per {unit} (ratio to {first})")
    for name, _ in trees:
        cells = []
        for key in results[first][0]:
            value = statistics.median(r[key] for r in results[name])
            base = statistics.median(r[key] for r in results[first])
            cells.append(f"{key} {value:6.1f} ({value / base:.2f}x)")
        print(f"  {name:<6} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
