"""What middleware costs: CPU per job of enqueueing and of draining N no-op jobs on memory://.

Each run is a fresh interpreter that queues N jobs (``enqueue_many`` in batches of 1,000:
the producer hooks' cost), then drains them through one in-process ``Worker`` (thread
pool, 8 slots: the worker hooks' cost), and reports the process's CPU time (all threads)
over each phase divided by N. Runs alternate between the cases, in reverse order every
other round (an A/A run showed the second of two identical runs ~1 µs slower), and the
best of ``--reps`` is the figure (the least disturbed by the rest of the machine), with
the median beside it.

    .venv/bin/python bench/middleware_cost.py                     # none, noop, prometheus
    .venv/bin/python bench/middleware_cost.py --old /tmp/base/src --cases none,prometheus
        # each case on this checkout and on another copy's src/ (e.g. `git archive REV src
        # | tar -x -C /tmp/base`), alternated run by run: did the hot paths get slower?

Cases: ``none`` (no middleware), ``noop`` (every hook a successful job meets overridden,
doing nothing: the cost of the calls themselves), ``prometheus``
(``conveyor.contrib.prometheus``, its own registry).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor import Middleware

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")


def one(case: str, n: int) -> dict[str, float]:
    """CPU µs per job of enqueueing and of draining, in this process."""
    from conveyor import Conveyor  # and nothing newer: --old may predate middleware
    from conveyor.worker import Worker

    middleware: list[Middleware] = []
    if case == "noop":
        middleware.append(_noop())
    elif case == "prometheus":
        from conveyor.contrib.prometheus import PrometheusMiddleware
        from prometheus_client import CollectorRegistry

        middleware.append(PrometheusMiddleware(registry=CollectorRegistry()))
    app = Conveyor("memory://", middleware=middleware) if middleware else Conveyor("memory://")

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    cpu = time.process_time()
    for start in range(0, n, 1000):
        app.enqueue_many(noop.s() for _ in range(min(1000, n - start)))
    enqueue = time.process_time() - cpu
    worker = Worker(app, ["default"], concurrency=8, grace=0.0)
    cpu = time.process_time()
    done = worker.drain(timeout=600)
    drain = time.process_time() - cpu
    assert done == n, (done, n)
    return {"enqueue": enqueue / n * 1e6, "drain": drain / n * 1e6}


def _noop() -> Middleware:
    from conveyor import Middleware

    class Noop(Middleware):
        def before_enqueue(self, message: object) -> None: ...
        def after_enqueue(self, message: object, error: object) -> None: ...
        def before_run(self, message: object) -> None: ...
        def after_run(self, message: object, run: object) -> None: ...
        def on_running(self, message: object) -> None: ...
        def on_outcome(self, message: object, outcome: object) -> None: ...

    return Noop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--reps", type=int, default=5, help="runs per case")
    parser.add_argument("--cases", default="none,noop,prometheus")
    parser.add_argument("--old", help="another copy's src/ to run each case on as well")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.n)))
        return
    runs = []
    for case in args.cases.split(","):
        if args.old:
            runs.append((f"{case} (old)", args.old))
        runs.append((case, SRC))
    found: dict[str, list[dict[str, float]]] = {label: [] for label, _ in runs}
    for rep in range(args.reps):
        for label, src in runs if rep % 2 == 0 else runs[::-1]:  # neither side always first
            case = label.split()[0]
            env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
            cmd = [sys.executable, __file__, "--one", case, "-n", str(args.n)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            found[label].append(json.loads(out.stdout))
    print(f"CPU µs per job, best and median of {args.reps} runs of {args.n} jobs")
    print(f"{'case':<18} {'enqueue':>8} {'median':>7} {'drain':>8} {'median':>7}")
    for label, values in found.items():
        cells = []
        for phase in ("enqueue", "drain"):
            xs = [v[phase] for v in values]
            cells.append(f"{min(xs):>8.1f} {statistics.median(xs):>7.1f}")
        print(f"{label:<18} {' '.join(cells)}")


if __name__ == "__main__":
    main()
