"""Where a PostgreSQL worker's time goes, per job: two source trees alternated on one server.

    .venv/bin/python bench/pg_profile.py --tree old=/tmp/base/src --tree new=src --pairs 5

For each pair of runs, and for each tree in turn (the order rotates with each pair), on a
private server (``pg_server.py``: fsync and synchronous_commit on, ``pg_stat_statements``):

* **drain** (W2's shape): ``--jobs`` no-op jobs are enqueued in batches of 1,000, then one
  ``conveyor worker`` (``--concurrency`` threads) drains them. Measured: jobs/s (the probe's
  first start to last end), the worker's CPU per job, and from ``pg_stat_statements`` (reset
  once the jobs are queued) the server's execution time, the write-ahead log and the
  statements the clients sent, per job, by statement (with ``--nested``, also the
  statements the functions run inside, each with its own time and log);
* **latency** (W3's shape): an idle worker, ``--latency-jobs`` jobs enqueued one at a time
  at 50/s; enqueue to start as the task sees it (p50, p90), and the server time per job.

Each tree runs in processes of its own (``PYTHONPATH`` puts its ``src`` first): the producer
and the worker, each tree on a fresh database (their schema versions may differ). Printed:
each tree's medians over the pairs, the ratio of every tree to the first, and the statements
of the last pair.

This module is also the worker's app (``conveyor worker pg_profile``) and the producer
(``--produce``), which read the database from ``PG_PROFILE_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import probe  # noqa: E402

RATE = 50.0  # latency jobs per second
WARMUP = 20

if "PG_PROFILE_URL" in os.environ:  # the worker's and the producer's import
    from conveyor import Conveyor

    app = Conveyor(os.environ["PG_PROFILE_URL"])

    _THREADS_FILE = os.environ.get("BENCH_PROBE_DIR", "") + ".threads.json"
    _N = int(os.environ.get("BENCH_PROBE_N", "0"))
    _cpu0: dict[str, float] = {}

    def _thread_cpu() -> dict[str, float]:
        """CPU seconds of each live thread, by name (numbered when several share one)."""
        out: dict[str, float] = {}
        for t in threading.enumerate():
            if t.ident is None:
                continue
            try:
                cpu = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except OSError:
                continue
            name = "job threads" if t.name.startswith("conveyor-job-") else t.name
            out[name] = out.get(name, 0.0) + cpu
        return out

    @app.task(name="noop")
    def noop(i: int) -> int:
        probe.hit()
        count = probe._get().count
        if count == 1:
            _cpu0.update(_thread_cpu())
        elif count == _N:
            now = _thread_cpu()
            with open(_THREADS_FILE, "w") as f:
                json.dump({k: v - _cpu0.get(k, 0.0) for k, v in now.items()}, f)
        return i

    # The steps of a latency job's way in the worker: when the listener got the notification
    # of its queue, when the claim was sent and when it returned (the last of each before
    # the job started: the jobs come one at a time).
    _steps: dict[str, float] = {}
    _legs: list[tuple[float, float, float, float]] = []
    if os.environ.get("PG_PROFILE_STEPS"):
        from conveyor.brokers.postgres import PostgresBroker, _listen

        _dispatch, _claim = _listen.Listener._dispatch, PostgresBroker._claim

        def _noted_dispatch(self: Any, payload: str) -> None:
            if payload.startswith("q:"):
                _steps["woken"] = time.time()
            _dispatch(self, payload)

        def _noted_claim(self: Any, *args: Any) -> Any:
            sent = time.time()
            got = _claim(self, *args)
            if got[0]:
                _steps["sent"], _steps["claimed"] = sent, time.time()
            return got

        _listen.Listener._dispatch = _noted_dispatch  # type: ignore[method-assign]
        PostgresBroker._claim = _noted_claim  # type: ignore[method-assign]

    @app.task(name="latency")
    def latency(t: float) -> float:
        probe.started(t)
        if t and _steps:
            now = time.time()
            woken, sent, claimed = _steps["woken"], _steps["sent"], _steps["claimed"]
            _legs.append((woken - t, sent - woken, claimed - sent, now - claimed))
            if probe._get().count == _N:
                with open(_THREADS_FILE.replace("threads", "steps"), "w") as f:
                    json.dump(_legs, f)
        return t


def produce(kind: str, n: int) -> None:
    """The producer's side of a run (in the tree's interpreter)."""
    if kind == "drain":
        for at in range(0, n, 1000):
            app.enqueue_many([noop.s(i) for i in range(at, min(n, at + 1000))])
        return
    for _ in range(WARMUP):
        latency.delay(0.0).result(timeout=60)
    import psycopg

    with psycopg.connect(os.environ["PG_PROFILE_URL"], autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")  # the warm-up's left out
    time.sleep(0.5)
    start = time.perf_counter()
    for i in range(n):
        pause = start + i / RATE - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        latency.delay(time.time())


# -- the parent ------------------------------------------------------------------------------

_STATEMENTS = """
SELECT s.toplevel, s.query, sum(s.calls)::float8, sum(s.total_exec_time),
       sum(s.wal_bytes)::float8
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = %s GROUP BY s.toplevel, s.query
"""


class Tree:
    def __init__(self, name: str, src: str) -> None:
        self.name, self.src = name, os.path.abspath(src)

    def env(self, url: str, probe_dir: str, n: int) -> dict[str, str]:
        return dict(
            os.environ, PG_PROFILE_URL=url, BENCH_PROBE_DIR=probe_dir, BENCH_PROBE_N=str(n),
            PYTHONPATH=os.pathsep.join([self.src, HERE]), PYTHONDONTWRITEBYTECODE="",
        )  # fmt: skip


def _statements(server: Any, database: str) -> dict[str, tuple[float, float, float]]:
    """By statement: calls, milliseconds, WAL bytes; a nested one's text indented."""
    import psycopg

    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        rows = conn.execute(_STATEMENTS, (database,)).fetchall()
    return {("" if top else "  ") + " ".join(q.split())[:90]: (calls, ms, wal)
            for top, q, calls, ms, wal in rows}  # fmt: skip


def _reset(server: Any) -> None:
    import psycopg

    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def _server_cpu(server: Any) -> float:
    """CPU seconds (user + system) of the private server's processes alive now: the
    postmaster and its children (backends, WAL writer, autovacuum, ...). Unlike the
    execution times ``pg_stat_statements`` keeps, time the server spent waiting for a CPU
    another process held is not in it."""
    from pg_server import server_pids

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in server_pids(server.data):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _wait(probe_dir: str, n: int, worker: subprocess.Popen[bytes], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        states = probe.read_all(probe_dir)
        if sum(int(s["count"]) for s in states) >= n:
            return states[0]
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode})")
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not finish in time")
        time.sleep(0.01)


def run(server: Any, tree: Tree, kind: str, n: int, args: argparse.Namespace) -> dict:
    url = server.fresh_database("profile")
    with tempfile.TemporaryDirectory(prefix="pg-profile-") as tmp:
        probe_dir = os.path.join(tmp, "probe")
        os.mkdir(probe_dir)
        total = n if kind == "drain" else n + WARMUP
        env = tree.env(url + args.query, probe_dir, total)
        producer = [sys.executable, os.path.join(HERE, "pg_profile.py"), "--produce", kind, str(n)]
        log = open(os.path.join(tmp, "worker.log"), "wb")  # noqa: SIM115
        if kind == "drain":
            subprocess.run(producer, env=env, check=True, cwd=HERE)
            _reset(server)
        cpu0 = _server_cpu(server)
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "pg_profile",
             "--concurrency", str(args.concurrency)],
            cwd=HERE, env=env, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            if kind == "latency":
                time.sleep(1.0)  # the worker is up (the warm-up jobs wait for it anyway)
                subprocess.run(producer, env=env, check=True, cwd=HERE)
            state = _wait(probe_dir, total, worker, args.timeout)
            server_cpu = _server_cpu(server) - cpu0
        finally:
            worker.terminate()
            worker.wait(30)
            log.close()
        statements = _statements(server, "profile")
        threads_file = probe_dir + ".threads.json"
        threads = json.load(open(threads_file)) if os.path.exists(threads_file) else {}  # noqa: SIM115
        steps_file = probe_dir + ".steps.json"
        steps = json.load(open(steps_file)) if os.path.exists(steps_file) else []  # noqa: SIM115
    out: dict[str, Any] = {
        "statements": statements,
        "threads_us": {k: v * 1e6 / n for k, v in threads.items()},
    }
    top = [v for q, v in statements.items() if not q.startswith(" ")]
    jobs = n
    out["server_us"] = sum(t for _, t, _ in top) * 1000 / jobs
    out["server_cpu_us"] = server_cpu * 1e6 / jobs
    out["statements_per_job"] = sum(c for c, _, _ in top) / jobs
    out["wal_per_job"] = sum(w for _, _, w in top) / jobs
    if kind == "drain":
        out["rate"] = n / (state["last"] - state["first"])
        out["cpu_us"] = state["cpu"] * 1e6 / n
    else:
        for at, leg in enumerate(("to_wake_ms", "wake_to_claim_ms", "claim_ms", "to_start_ms")):
            if steps:
                out[leg] = statistics.median(s[at] for s in steps) * 1000
        lat = sorted(state["latencies"])
        out["p50_ms"] = lat[len(lat) // 2] * 1000
        out["p90_ms"] = lat[int(len(lat) * 0.9)] * 1000
    return out


FIGURES = {
    "drain": (("rate", "jobs/s"), ("cpu_us", "worker CPU µs/job"), ("server_us", "server µs/job"),
              ("server_cpu_us", "server CPU µs/job"), ("statements_per_job", "statements/job"),
              ("wal_per_job", "WAL bytes/job")),
    "latency": (("p50_ms", "start p50 ms"), ("p90_ms", "start p90 ms"),
                ("server_us", "server µs/job"), ("statements_per_job", "statements/job"),
                ("to_wake_ms", "enqueue->notified ms"), ("wake_to_claim_ms", "->claim sent ms"),
                ("claim_ms", "claim ms"), ("to_start_ms", "->started ms")),
}  # fmt: skip


def report(results: dict[str, dict[str, list[dict]]], trees: list[Tree], kinds: list[str],
           args: argparse.Namespace) -> None:  # fmt: skip
    """Each tree's medians, their ratios to the first tree's (and in brackets the median of
    the ratios within each pair, which a load that drifts between pairs moves less), the
    last pair's statements."""
    first = trees[0].name
    for kind in kinds:
        print(f"\n{kind}: medians of {args.pairs} pairs")
        for key, label in FIGURES[kind]:
            if any(key not in r for t in trees for r in results[t.name][kind]):
                continue
            base = statistics.median(r[key] for r in results[first][kind])
            cells = []
            for t in trees:
                value = statistics.median(r[key] for r in results[t.name][kind])
                paired = statistics.median(
                    r[key] / f[key] if f[key] else 0.0
                    for r, f in zip(results[t.name][kind], results[first][kind], strict=True)
                )
                cells.append(f"{t.name} {value:,.2f}" + (
                    f" ({value / base:.2f}x [{paired:.2f}x])" if t.name != first and base
                    else ""))  # fmt: skip
            print(f"  {label:<20} " + "  ".join(cells))
        for t in trees:
            last = results[t.name][kind][-1]
            jobs = args.jobs if kind == "drain" else args.latency_jobs
            print(f"  {t.name}: statements of the last pair (per job: calls, server µs, WAL "
                  "bytes; indented: run inside a function)")  # fmt: skip
            for query, (calls, ms, wal) in sorted(
                last["statements"].items(), key=lambda x: -x[1][1]
            ):
                if ms * 1000 / jobs >= 0.2:
                    print(f"    {calls / jobs:7.3f} {ms * 1000 / jobs:8.1f} {wal / jobs:6.0f}  "
                          f"{query}")  # fmt: skip
            if last.get("threads_us"):
                print(
                    "    worker CPU µs/job by thread: "
                    + ", ".join(
                        f"{k} {v:.1f}"
                        for k, v in sorted(last["threads_us"].items(), key=lambda x: -x[1])
                        if v >= 0.5
                    )
                )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--produce", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    p.add_argument("--tree", action="append", default=[], metavar="NAME=SRC")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--latency-jobs", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--kinds", default="drain,latency")
    p.add_argument("--query", default="", help="appended to the URL, e.g. ?options=...")
    p.add_argument(
        "--steps", action="store_true",
        help="latency: time each step in the worker (notified, claim sent, claimed, started)",
    )  # fmt: skip
    p.add_argument(
        "--nested", action="store_true",
        help="also time the statements run inside the functions (pg_stat_statements.track "
        "= all: adds a little to every statement's time)",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    if args.produce:
        produce(args.produce[0], int(args.produce[1]))
        return 0
    from pg_server import private_postgres

    if args.steps:
        os.environ["PG_PROFILE_STEPS"] = "1"

    trees = [Tree(*t.split("=", 1)) for t in args.tree] or [Tree("new", os.path.join(ROOT, "src"))]
    kinds = args.kinds.split(",")
    results: dict[str, dict[str, list[dict]]] = {t.name: {k: [] for k in kinds} for t in trees}
    with private_postgres() as server:
        with __import__("psycopg").connect(server.admin_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            if args.nested:
                conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
                conn.execute("SELECT pg_reload_conf()")
        print(server.describe(), flush=True)
        for pair in range(args.pairs):
            order = trees[pair % len(trees) :] + trees[: pair % len(trees)]
            for kind in kinds:
                for tree in order:
                    n = args.jobs if kind == "drain" else args.latency_jobs
                    r = run(server, tree, kind, n, args)
                    results[tree.name][kind].append(r)
                    shown = ", ".join(
                        f"{r[k]:,.2f} {label}" for k, label in FIGURES[kind] if k in r
                    )
                    print(f"pair {pair} {kind:<7} {tree.name:<6} {shown}", flush=True)
    report(results, trees, kinds, args)
    out = os.path.join(HERE, ".results", f"pg-profile-{time.strftime('%Y%m%dT%H%M%S')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f)
    print(f"\nraw: {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
