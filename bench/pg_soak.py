"""A long PostgreSQL soak: do the broker's tables stay bounded over 1,000,000 jobs?

    .venv/bin/python bench/pg_soak.py                      # 1,000,000 jobs, private server
    .venv/bin/python bench/pg_soak.py --jobs 100000 --result-ttl 5 --out /tmp/soak.md

One ``conveyor worker`` process (32 threads) drains no-op jobs while this process enqueues
them with ``enqueue_many`` in batches of 1,000, never more than 20,000 ahead of the worker
(the probe's count, as in ``run.py``'s soak). The jobs' records live ``--result-ttl``
seconds after they end; the worker's sweep then deletes them in batches. Every ``--every``
seconds, and for ``--tail`` seconds after the last job (long enough for a sweep and an
autovacuum), the size of each table of the schema (``pg_total_relation_size``: heap,
indexes and TOAST), its live and dead rows and its autovacuum count are sampled.

The server is a private one (``pg_server.py``: default settings, autovacuum on), unless
``--url`` names an empty database of another.

This module is also the worker's app (``conveyor worker pg_soak``): it reads the database
from ``PG_SOAK_URL`` when that is set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
from conveyor import Conveyor, Task

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import probe  # noqa: E402

BATCH = 1000
BACKLOG = 20_000
SCHEMA = "conveyor"


def make_app(url: str, result_ttl: float) -> tuple[Conveyor, Task[[int], int]]:
    app = Conveyor(url)

    @app.task(name="noop", result_ttl=result_ttl)
    def noop(i: int) -> int:
        probe.hit()
        return i

    return app, noop


if "PG_SOAK_URL" in os.environ:  # the worker's import
    app, _ = make_app(os.environ["PG_SOAK_URL"], float(os.environ["PG_SOAK_TTL"]))

_SIZES = """
SELECT s.relname, pg_total_relation_size(s.relid), s.n_live_tup, s.n_dead_tup,
       s.autovacuum_count
FROM pg_stat_user_tables s WHERE s.schemaname = %s
"""


class Sampler(threading.Thread):
    """Samples the schema's tables every ``every`` s into ``samples``."""

    def __init__(self, url: str, every: float, progress: Any) -> None:
        super().__init__(name="pg-soak-sampler", daemon=True)
        self.url = url
        self.every = every
        self.progress = progress  # () -> (sent, done)
        self.samples: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.t0 = time.monotonic()

    def sample(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(_SIZES, (SCHEMA,)).fetchall()
        sent, done = self.progress()
        self.samples.append({
            "t": time.monotonic() - self.t0, "sent": sent, "done": done,
            "tables": {name: {"bytes": size, "live": live, "dead": dead, "autovacuums": av}
                       for name, size, live, dead, av in rows},
        })  # fmt: skip

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.wait(self.every):
                self.sample(conn)
            self.sample(conn)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--result-ttl", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--every", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--tail", type=float, default=75.0, metavar="SECONDS")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--url", default=None, help="a database of another server")
    p.add_argument("--out", default=None, help="markdown file to write (else stdout only)")
    return p.parse_args(argv)


def soak(url: str, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    probe_dir = os.path.join(tmp, "probe")
    os.makedirs(probe_dir)
    env = dict(os.environ, PG_SOAK_URL=url, PG_SOAK_TTL=str(args.result_ttl),
               BENCH_PROBE_DIR=probe_dir, BENCH_PROBE_N=str(args.jobs),
               PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))  # fmt: skip
    producer, noop = make_app(url, args.result_ttl)
    done = lambda: sum(int(s["count"]) for s in probe.read_all(probe_dir))  # noqa: E731
    sent = 0
    log = open(os.path.join(tmp, "worker.log"), "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "pg_soak",
         "--concurrency", str(args.concurrency)],
        cwd=HERE, env=env, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    sampler = Sampler(url, args.every, lambda: (sent, done()))
    t0 = time.monotonic()
    try:
        while sent < args.jobs:
            if sent - done() > BACKLOG:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited with code {worker.returncode}")
                time.sleep(0.05)
                continue
            batch = range(sent, min(args.jobs, sent + BATCH))
            producer.enqueue_many([noop.s(i) for i in batch])
            sent += len(batch)
            if not sampler.is_alive() and sampler.samples == []:
                sampler.start()  # once the schema exists
        while done() < args.jobs:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with code {worker.returncode}")
            time.sleep(0.1)
        drained = time.monotonic() - t0
        print(f"{args.jobs:,} jobs in {drained:.0f} s; sampling {args.tail:.0f} s more")
        time.sleep(args.tail)
    finally:
        sampler.stopping.set()
        sampler.join(30)
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        producer.close()
    return {"jobs": args.jobs, "seconds": drained, "samples": sampler.samples}


def mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def render(result: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    """The samples nearest each 10% of the jobs done, the last sample, and the verdict."""
    samples = result["samples"]
    n = result["jobs"]
    names = sorted({t for s in samples for t in s["tables"]})
    picks: list[dict[str, Any]] = []
    for k in range(1, 11):
        target = n * k / 10
        best = min(samples, key=lambda s: abs(s["done"] - target))
        if best not in picks:
            picks.append(best)
    if samples[-1] not in picks:
        picks.append(samples[-1])
    head = ["s", "jobs done", "jobs: live rows", "jobs: dead rows", "jobs MB",
            "events MB", "all tables MB", "autovacuums of jobs"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for s in picks:
        jobs = s["tables"].get("jobs", {})
        total = sum(t["bytes"] for t in s["tables"].values())
        lines.append(
            f"| {s['t']:.0f} | {s['done']:,} | {jobs.get('live', 0):,} | "
            f"{jobs.get('dead', 0):,} | {mb(jobs.get('bytes', 0))} | "
            f"{mb(s['tables'].get('events', {}).get('bytes', 0))} | {mb(total)} | "
            f"{jobs.get('autovacuums', 0)} |"
        )
    totals = [sum(t["bytes"] for t in s["tables"].values()) for s in samples]
    half = [t for s, t in zip(samples, totals, strict=True) if s["done"] <= n / 2]
    rest = [t for s, t in zip(samples, totals, strict=True) if s["done"] > n / 2]
    verdict = (
        f"Largest size of all tables: {mb(max(half or [0]))} MB in the first half of the "
        f"jobs, {mb(max(rest or [0]))} MB in the second half."
    )
    return "\n".join([
        f"{n:,} jobs drained in {result['seconds']:.0f} s ({n / result['seconds']:,.0f} "
        f"jobs/s, producer and worker on one machine), `result_ttl` {args.result_ttl:g} s; "
        f"tables: {', '.join(names)}.",
        "", *lines, "", verdict, "", f"Command: `{command}`", "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from pg_server import private_postgres

    args = parse_args(argv)
    command = " ".join([".venv/bin/python bench/pg_soak.py", *(argv or sys.argv[1:])])
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="pg-soak-") as tmp:
        if args.url:
            result = soak(args.url, args, tmp)
        else:
            with private_postgres() as server:
                result = soak(server.fresh_database("soak"), args, tmp)
    text = render(result, args, command)
    print(text)
    raw = os.path.join(HERE, ".results", f"pg-soak-{started:%Y%m%dT%H%M%S}.json")
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    with open(raw, "w") as f:
        json.dump(result, f)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(f"raw samples: {os.path.relpath(raw)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
