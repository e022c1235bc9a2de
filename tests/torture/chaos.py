"""Chaos soak (``make chaos``; not part of CI, and not collected by pytest).

Enqueues N jobs while several ``conveyor worker`` subprocesses run them; every few seconds
one worker, drawn at random, is SIGKILLed and restarted, and on Redis the private server
(AOF ``appendfsync always``, never the shared one on 6379) is killed -9 and restarted from
its AOF a few times. At the end it prints lost / duplicated / unexpected (the checker of
``checker.py``, counting runs from the log the tasks write) and the time taken; the exit
code is 1 if anything was lost, unexpected or completed twice.

    python -m tests.torture.chaos --jobs 100000 --workers 3 --broker redis
    python tests/torture/chaos.py --jobs 20000 --broker sqlite
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
if not __package__:  # run as a file: import as the package it lives in (PEP 366)
    __package__ = "tests.torture"

from conveyor import Signature  # noqa: E402
from conveyor._errors import BrokerError  # noqa: E402
from redis_server import RedisServer, unique_prefix  # noqa: E402

from .checker import check  # noqa: E402
from .workers import Cluster, Worker  # noqa: E402

BATCH = 500


def _retry(what: str, fn: Any, give_up: float) -> Any:
    """Call ``fn`` until it works (the broker may be restarting) or ``give_up`` passes."""
    while True:
        try:
            return fn()
        except (BrokerError, ConnectionError, OSError) as exc:
            if time.monotonic() > give_up:
                raise
            print(f"  {what}: {type(exc).__name__}: {exc}; retrying", flush=True)
            time.sleep(0.5)


class Producer(threading.Thread):
    """Enqueues the jobs in batches; a batch whose call raised is recorded as unknown (it
    may or may not have been written) and enqueued again under new tags."""

    def __init__(self, cluster: Cluster, jobs: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.jobs = cluster, jobs
        self.acked: dict[str, str] = {}  # tag -> job id
        self.unknown: list[str] = []
        self.took = 0.0

    def run(self) -> None:
        app = self.cluster.app()
        began = time.monotonic()
        for start in range(0, self.jobs, BATCH):
            tags = [str(i) for i in range(start, min(self.jobs, start + BATCH))]
            for attempt in range(100):
                batch = [t if attempt == 0 else f"{t}r{attempt}" for t in tags]
                sigs: list[Signature[Any]] = [
                    Signature(app, "torture_app:sleepy", (t, 0.0), {}, app.defaults) for t in batch
                ]
                try:
                    jobs = app.enqueue_many(sigs)
                except (BrokerError, ConnectionError, OSError) as exc:
                    print(
                        f"  enqueue: {type(exc).__name__}: {exc}; outcome unknown, "
                        "enqueueing the batch again",
                        flush=True,
                    )
                    self.unknown += batch
                    time.sleep(0.5)
                    continue
                self.acked.update((t, j.id) for t, j in zip(batch, jobs, strict=True))
                break
        self.took = time.monotonic() - began
        app.close()


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 (one script, read top down)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--broker", choices=["redis", "sqlite"], default="redis")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--lease", type=float, default=2.0)
    ap.add_argument(
        "--kill-every", type=float, default=2.0, help="mean seconds between worker SIGKILLs"
    )
    ap.add_argument("--redis-restarts", type=int, default=3)
    ap.add_argument(
        "--redis-every", type=float, default=4.0, help="seconds between Redis kill -9 / restarts"
    )
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rand = random.Random(seed)

    work = Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    server: RedisServer | None = None
    if args.broker == "redis":
        server = RedisServer(
            work / "redis",
            appendonly=True,
            extra=("--appendfsync", "always", "--auto-aof-rewrite-percentage", "0"),
        )
        cluster = Cluster(work / "app", server.url, unique_prefix())
    else:
        cluster = Cluster(work / "app")
    print(
        f"chaos: {args.jobs} jobs, {args.workers} workers x {args.concurrency} threads, "
        f"lease {args.lease} s, broker {args.broker}, seed {seed}, in {work}",
        flush=True,
    )

    wargs = (
        "--lease",
        str(args.lease),
        "-c",
        str(args.concurrency),
        "--max-deliveries",
        "50",
        "--grace",
        "1",
    )
    kills = restarts = 0
    began = time.monotonic()
    give_up = began + args.timeout
    try:
        cluster.app().close()  # the schema exists before the workers and producer race for it
        workers: list[Worker] = [cluster.worker(f"w{i}", *wargs) for i in range(args.workers)]
        producer = Producer(cluster, args.jobs)
        producer.start()

        ended: set[str] = set()
        offset = 0
        next_kill = time.monotonic() + rand.expovariate(1 / args.kill_every)
        next_redis = time.monotonic() + args.redis_every
        last_report = time.monotonic()
        while True:
            now = time.monotonic()
            if now > give_up:
                print("chaos: timed out; counting what ended", flush=True)
                break
            if cluster.runs_log.exists():  # the jobs' own log, read as it grows
                with open(cluster.runs_log) as f:
                    f.seek(offset)
                    chunk = f.read()
                cut = chunk.rfind("\n") + 1
                offset += cut
                for line in chunk[:cut].splitlines():
                    event, tag, _, _ = line.split()
                    if event == "end":
                        ended.add(tag)
            if not producer.is_alive() and ended >= set(producer.acked):
                break
            if now >= next_kill:
                i = rand.randrange(len(workers))
                victim = workers[i]
                victim.signal(signal.SIGKILL)
                victim.wait(10)
                kills += 1
                workers[i] = cluster.worker(f"w{i}k{kills}", *wargs, ready=False)
                next_kill = now + rand.expovariate(1 / args.kill_every)
            if server is not None and restarts < args.redis_restarts and now >= next_redis:
                print(
                    f"  kill -9 redis-server and restart it from its AOF ({len(ended)} "
                    "jobs ended so far)",
                    flush=True,
                )
                server.restart()
                restarts += 1
                next_redis = now + args.redis_every
            for i, w in enumerate(workers):  # a worker may exit on its own: say so, restart
                if not w.alive():
                    print(
                        f"  worker {w.name} exited {w.proc.returncode}; restarting it", flush=True
                    )
                    workers[i] = cluster.worker(f"{w.name}x", *wargs, ready=False)
            if now - last_report > 10:
                print(
                    f"  {now - began:6.0f} s: {len(producer.acked)} enqueued, "
                    f"{len(ended)} ended, {kills} kills, {restarts} redis restarts",
                    flush=True,
                )
                last_report = now
            time.sleep(0.2)
        ran_for = time.monotonic() - began
        producer.join(60)

        # What the broker recorded: a job counts as completed once its end is stored.
        app = cluster.app()
        completed, dead = [], []
        ids = dict(producer.acked)
        for tag, job_id in ids.items():
            status = _retry("status", lambda j=job_id: app.job(j).status, give_up + 60)
            if status.terminal:
                completed.append(tag)
                if status.value != "succeeded":
                    dead.append(tag)
        app.close()
        runs = [t for e, t, _, _ in cluster.runs() if e == "start"]
        report = check(
            acknowledged=producer.acked,
            unknown=producer.unknown,
            executed=runs,
            completed=completed,
        )
        rate = len(ids) / ran_for if ran_for else 0.0
        print(
            f"chaos: broker {args.broker}, {args.jobs} jobs, {args.workers} workers, "
            f"{kills} worker SIGKILLs, {restarts} Redis kill -9/restarts, seed {seed}"
        )
        print(
            f"  lost {len(report.lost)}, duplicated {report.duplicate_runs} run(s) of "
            f"{len(report.duplicated)} job(s), unexpected {len(report.unexpected)}, "
            f"completed twice {len(report.completed_twice)}, recovered "
            f"{len(report.recovered)} of {report.unknown} unknown, not succeeded "
            f"{len(dead)}"
        )
        print(f"  time {ran_for:.1f} s (enqueue {producer.took:.1f} s), {rate:.0f} jobs/s")
        print(f"  {report}")
        bad = report.lost or report.unexpected or report.completed_twice or dead
        return 1 if bad else 0
    finally:
        cluster.cleanup()
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
