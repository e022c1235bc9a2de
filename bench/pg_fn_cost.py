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
Printed: each run, then each tree's medians and their ratio to the first tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _server_cpu(data: str) -> float:
    """CPU seconds of the server's processes alive now (``schedstat``: nanoseconds)."""
    from pg_server import server_pids

    total = 0
    for pid in server_pids(data):
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue
    return total / 1e9


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
        before = _server_cpu(data)
        got, _ = broker._claim(["default"], batch, 60.0)  # type: ignore[attr-defined]
        claimed = _server_cpu(data)
        if not got:
            break
        outcomes = [Finish(d, JobStatus.SUCCEEDED, b"r" * 20, event=event) for d in got]
        assert all(broker._finish(outcomes, [event] * len(got)))  # type: ignore[attr-defined]
        spent["fetch"] += claimed - before
        spent["finish"] += _server_cpu(data) - claimed
        done += len(got)
    app.close()
    return {k: v * 1e6 / done for k, v in spent.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--child", nargs=4, metavar=("URL", "N", "BATCH", "DATA"), help=argparse.SUPPRESS
    )
    p.add_argument("--tree", action="append", default=[], metavar="NAME=SRC")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=80, help="jobs per fetch and finish")
    args = p.parse_args()
    if args.child:
        url, n, batch, data = args.child
        print(json.dumps(child(url, int(n), int(batch), data)))
        return 0
    from pg_server import private_postgres

    trees = [t.split("=", 1) for t in args.tree] or [["new", os.path.join(HERE, "..", "src")]]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    with private_postgres() as server:
        print(server.describe(), flush=True)
        for pair in range(args.pairs):
            for name, src in trees[pair % len(trees) :] + trees[: pair % len(trees)]:
                url = server.fresh_database("fn_cost")
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(src), HERE]))
                command = [sys.executable, __file__, "--child", url, str(args.jobs),
                           str(args.batch), server.data]  # fmt: skip
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[name].append(r)
                print(f"pair {pair} {name:<6} fetch {r['fetch']:6.1f}  finish {r['finish']:6.1f} "
                      "µs of server CPU per job", flush=True)  # fmt: skip
    first = trees[0][0]
    print(f"\nmedians of {args.pairs} pairs, µs of server CPU per job (ratio to {first})")
    for name, _ in trees:
        cells = []
        for key in ("fetch", "finish"):
            value = statistics.median(r[key] for r in results[name])
            base = statistics.median(r[key] for r in results[first])
            cells.append(f"{key} {value:6.1f} ({value / base:.2f}x)")
        print(f"  {name:<6} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
