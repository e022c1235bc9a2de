"""Chaos soak (``make chaos``; not part of CI, and not collected by pytest).

Enqueues N jobs while several ``conveyor worker`` subprocesses run them, and injects faults
by progress and by time: a worker, drawn at random among those running, is SIGKILLed and
restarted when 10 %, 30 % and 60 % of the jobs have ended (``--kill-at``) and every ~2 s
(``--kill-every``); on Redis the private server (AOF ``appendfsync always``, never the
shared one on 6379) is killed -9 and restarted from its AOF at 20 %, 50 % and 80 %
(``--redis-at``) and every 15 s (``--redis-every``). A fault counts as injected only while
jobs are still unended. At the end it prints, per kind of fault, how many were asked
(``--kills``, ``--redis-restarts``: by default one per progress point) and injected, then
lost / duplicated / unexpected (the checker of ``checker.py``, counting runs from the log
the tasks write) and the time taken. The exit code is 1 if anything was lost, unexpected or
completed twice, or if fewer faults were injected than asked: a run that drained before its
faults proves nothing.

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

from conveyor import Conveyor, Signature  # noqa: E402
from conveyor._errors import BrokerError  # noqa: E402
from conveyor.testing.checker import check  # noqa: E402
from redis_server import RedisServer, unique_prefix  # noqa: E402

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

    def __init__(self, cluster: Cluster, jobs: int, seconds: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.cluster, self.jobs, self.seconds = cluster, jobs, seconds
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
                    Signature(app, "torture_app:sleepy", (t, self.seconds), {}, app.defaults)
                    for t in batch
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


class Faults:
    """One kind of fault and when it is due: once each listed fraction of the jobs has
    ended, and by time (every ``every`` seconds, exponentially distributed when
    ``jitter``). ``asked`` is the least the run must inject."""

    def __init__(
        self,
        name: str,
        at: list[float],
        every: float,
        asked: int | None,
        rand: random.Random,
        *,
        jitter: bool,
    ) -> None:
        self.name = name
        self.pending = sorted(at)
        self.points = list(self.pending)
        self.every = every
        self.asked = len(at) if asked is None else asked
        self.rand = rand
        self.jitter = jitter
        self.at_progress = 0
        self.by_time = 0
        self.next_time = self._draw(time.monotonic())

    def _draw(self, now: float) -> float:
        if self.every <= 0:
            return float("inf")
        return now + (self.rand.expovariate(1 / self.every) if self.jitter else self.every)

    def due(self, now: float, fraction: float) -> str | None:
        """Why a fault is due now ("at 30 %" or "by time"), or None."""
        if self.pending and fraction >= self.pending[0]:
            return f"at {self.pending[0]:.0%}"
        if now >= self.next_time:
            return "by time"
        return None

    def injected_now(self, why: str, now: float) -> None:
        if why == "by time":
            self.by_time += 1
            self.next_time = self._draw(now)
        else:
            self.pending.pop(0)
            self.at_progress += 1

    @property
    def injected(self) -> int:
        return self.at_progress + self.by_time

    @property
    def short(self) -> bool:
        return self.injected < self.asked

    def report(self) -> str:
        points = ", ".join(f"{p:.0%}" for p in self.points) or "no point"
        return (
            f"{self.name}: asked {self.asked}, injected {self.injected} ({self.at_progress} "
            f"of {len(self.points)} at {points} of jobs ended, {self.by_time} by time)"
        )


class Progress:
    """The tags of the jobs that ended, read from the tasks' own log as it grows."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.offset = 0
        self.ended: set[str] = set()

    def read(self) -> set[str]:
        if self.log.exists():
            with open(self.log) as f:
                f.seek(self.offset)
                chunk = f.read()
            cut = chunk.rfind("\n") + 1
            self.offset += cut
            for line in chunk[:cut].splitlines():
                event, tag, _, _ = line.split()
                if event == "end":
                    self.ended.add(tag)
        return self.ended


def _fractions(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if any(not 0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions between 0 and 1, e.g. 0.1,0.3,0.6: {text}")
    return values


def _fault_options(
    ap: argparse.ArgumentParser,
    kind: str,
    *,
    least: str,
    what: str,
    at: list[float],
    every: float,
    how: str = "",
) -> None:
    """``--KIND-at``, ``--KIND-every`` and ``--LEAST`` for one kind of fault."""
    ap.add_argument(
        f"--{kind}-at",
        type=_fractions,
        default=at,
        help=f"{what} when these fractions of the jobs have ended",
    )
    ap.add_argument(
        f"--{kind}-every",
        type=float,
        default=every,
        help=f"and every this many seconds{how} (0: never by time)",
    )
    ap.add_argument(
        f"--{least}", type=int, default=None, help=f"least {what} (default: one per point)"
    )


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--broker", choices=["redis", "sqlite"], default="redis")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--lease", type=float, default=2.0)
    ap.add_argument("--job-seconds", type=float, default=0.0, help="how long each job sleeps")
    _fault_options(
        ap, "kill", least="kills", what="worker SIGKILLs", at=[0.1, 0.3, 0.6], every=2.0,
        how=" on average",
    )  # fmt: skip
    _fault_options(
        ap, "redis", least="redis-restarts", what="Redis kill -9/restarts", at=[0.2, 0.5, 0.8],
        every=15.0,
    )  # fmt: skip
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    return ap.parse_args(argv)


def _kill_a_worker(cluster: Cluster, workers: list[Worker], wargs: tuple[str, ...],
                   rand: random.Random, kills: int) -> bool:  # fmt: skip
    """SIGKILL a worker that is running jobs (it has announced itself) and start another in
    its place; False if none has yet (all are starting: try again at the next look)."""
    running = [i for i, w in enumerate(workers) if w.alive() and "conveyor worker" in w.output()]
    if not running:
        return False
    i = rand.choice(running)
    workers[i].signal(signal.SIGKILL)
    workers[i].wait(10)
    workers[i] = cluster.worker(f"w{i}k{kills}", *wargs, ready=False)
    return True


def _settle(app: Conveyor, give_up: float) -> None:
    while time.monotonic() < give_up:
        stats = _retry("stats", app.broker.stats, give_up + 60)
        if all(s.queued + s.scheduled + s.running == 0 for s in stats):
            return
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 (one script, read top down)
    args = _arguments(argv)
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
    kills = Faults("worker SIGKILLs", args.kill_at, args.kill_every, args.kills, rand, jitter=True)
    restarts = Faults(
        "Redis kill -9/restarts", args.redis_at, args.redis_every, args.redis_restarts, rand,
        jitter=False,
    )  # fmt: skip
    faults = [kills] if server is None else [kills, restarts]
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
    began = time.monotonic()
    give_up = began + args.timeout
    try:
        cluster.app().close()  # the schema exists before the workers and producer race for it
        workers: list[Worker] = [cluster.worker(f"w{i}", *wargs) for i in range(args.workers)]
        producer = Producer(cluster, args.jobs, args.job_seconds)
        producer.start()
        progress = Progress(cluster.runs_log)
        last_report = time.monotonic()
        while True:
            now = time.monotonic()
            if now > give_up:
                print("chaos: timed out; counting what ended", flush=True)
                break
            ended = progress.read()
            if not producer.is_alive() and ended >= set(producer.acked):
                break
            fraction = len(ended) / args.jobs
            if (why := kills.due(now, fraction)) and _kill_a_worker(
                cluster, workers, wargs, rand, kills.injected
            ):
                kills.injected_now(why, now)
                print(f"  SIGKILL a worker {why} ({len(ended)} jobs ended)", flush=True)
            if server is not None and (why := restarts.due(now, fraction)):
                print(f"  kill -9 redis-server and restart it from its AOF {why} "
                      f"({len(ended)} jobs ended)", flush=True)  # fmt: skip
                server.restart()
                restarts.injected_now(why, now)
            for i, w in enumerate(workers):  # a worker may exit on its own: say so, restart
                if not w.alive():
                    print(
                        f"  worker {w.name} exited {w.proc.returncode}; restarting it", flush=True
                    )
                    workers[i] = cluster.worker(f"{w.name}x", *wargs, ready=False)
            if now - last_report > 10:
                print(
                    f"  {now - began:6.0f} s: {len(producer.acked)} enqueued, "
                    f"{len(ended)} ended, {kills.injected} kills, {restarts.injected} "
                    "redis restarts",
                    flush=True,
                )
                last_report = now
            # Look often: a fault is due the moment its point is passed, and a fast drain
            # passes 10 % of 20,000 jobs in a few hundred milliseconds.
            time.sleep(0.02)
        producer.join(60)
        app = cluster.app()
        # Every job has run to its end, but a worker killed after a job's end and before
        # its outcome was written leaves it running until its lease expires and it runs
        # again: wait for the broker to hold nothing queued, scheduled or running.
        _settle(app, give_up)
        ran_for = time.monotonic() - began

        # What the broker recorded: a job counts as completed once its end is stored.
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
        print(f"chaos: broker {args.broker}, {args.jobs} jobs, {args.workers} workers, seed {seed}")
        for kind in faults:
            print(f"  {kind.report()}")
        print(
            f"  lost {len(report.lost)}, duplicated {report.duplicate_runs} run(s) of "
            f"{len(report.duplicated)} job(s), unexpected {len(report.unexpected)}, "
            f"completed twice {len(report.completed_twice)}, recovered "
            f"{len(report.recovered)} of {report.unknown} unknown, not succeeded "
            f"{len(dead)}"
        )
        print(f"  time {ran_for:.1f} s (enqueue {producer.took:.1f} s), {rate:.0f} jobs/s")
        print(f"  {report}")
        short = [kind for kind in faults if kind.short]
        for kind in short:
            print(
                f"chaos: FAILED: {kind.injected} {kind.name} injected while jobs ran, "
                f"{kind.asked} asked: the jobs drained first (more --jobs, or --job-seconds)"
            )
        bad = report.lost or report.unexpected or report.completed_twice or dead or short
        return 1 if bad else 0
    finally:
        cluster.cleanup()
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
