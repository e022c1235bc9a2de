"""Drain N queued jobs through one in-process Conveyor worker on a private redis-server and
print jobs/s and CPU µs per job of the worker (in all, and per thread: consumer, finisher,
job threads or event loop) and of the redis-server: the figures behind "Where a job's time
goes" in docs/architecture.md. Not part of bench/run.py (which compares against the peers).

    .venv/bin/python bench/profile_drain.py                      # W2-like: 10,000 no-ops, 32 slots
    .venv/bin/python bench/profile_drain.py --sleep 0.01 -n 2000 -c 50   # W4-like
    .venv/bin/python bench/profile_drain.py --sleep 0.01 -n 2000 -c 50 --pool async
    .venv/bin/python bench/profile_drain.py --commandstats   # + the server's commands per job
    .venv/bin/python bench/profile_drain.py --calls    # + the worker's fetch and finish calls
    .venv/bin/python bench/profile_drain.py --events off   # Conveyor(events=False); default on
    .venv/bin/python bench/profile_drain.py --log-line   # each job logs one INFO line through
        # the worker's log setup (``conveyor worker``'s), stderr sent to a file for the runs
    .venv/bin/python bench/profile_drain.py --memory   # memory:// in process: the worker alone
    .venv/bin/python bench/profile_drain.py --rabbitmq   # the machine's RabbitMQ (a fresh vhost
        # per run; beam.smp's CPU too), the records in the private redis-server
    .venv/bin/python bench/profile_drain.py --postgres --calls   # a private PostgreSQL (a fresh
        # database per run; the CPU of all its processes: backends, WAL writer, ...)
    .venv/bin/py-spy record -r 500 -f raw -o /tmp/drain.txt -- \\
        .venv/bin/python bench/profile_drain.py --reps 1 -n 30000          # where the time goes

Timing is the same as bench/run.py's: first task start to last task end, so start-up and
the enqueue of the backlog are excluded. CPU is this process's (all threads) over that span,
and the redis-server main thread's (``INFO cpu``): both exact run times from the kernel, not
the wall clock, so they hold on a loaded machine, where jobs/s swings. To compare two
checkouts, run each one's copy of this file in turn (the worker is the checkout's own):

    for i in 1 2 3; do (cd /tmp/old && nice .venv/bin/python bench/profile_drain.py --reps 1);
        nice .venv/bin/python bench/profile_drain.py --reps 1; done
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import redis
from conveyor import Conveyor
from conveyor.worker import Worker

from pg_server import PostgresServer, private_postgres, server_cpu
from rabbitmq_server import RabbitServer
from redis_server import main_thread_cpu_usec, private_redis

CLK_TCK = os.sysconf("SC_CLK_TCK")
JOB_LOG = logging.getLogger("conveyor.bench")  # at INFO once --log-line configures logging
# Voluntary and involuntary, of all the worker's threads (getrusage): each one a thread that
# blocked (a hand-off it waited for) or was preempted, so this counts the wake-ups a job costs.
SWITCHES = "switches"


def _cpu_of(stat_path: str) -> float:
    with open(stat_path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each of this process's threads, by native id, with the thread's role."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            cpu = _cpu_of(f"/proc/self/task/{tid}/stat")
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (_role(names.get(int(tid), "")), cpu)
    return out


def _role(name: str) -> str:
    if name.startswith("conveyor-job-"):
        return "job threads"
    return {"conveyor-finish": "finisher", "conveyor-asyncio": "event loop"}.get(name, name)


class Calls:
    """Times every ``fetch`` and ``finish`` call of the worker's broker during a run: how
    many, how big, how long, and how much of the run each kind (and both) had one in
    flight. Two calls in flight wait for each other at the server, which runs one script
    at a time."""

    def __init__(self, broker: object) -> None:
        self.log: list[tuple[str, float, float, int]] = []
        self._lock = threading.Lock()
        for name in ("fetch", "finish"):
            self._wrap(broker, name)

    def _wrap(self, broker: object, name: str) -> None:
        orig = getattr(broker, name)

        def timed(*args: object, **kwargs: object) -> object:
            began = time.perf_counter()
            out = orig(*args, **kwargs)
            jobs = len(out) if isinstance(out, list) else 0
            with self._lock:
                self.log.append((name, began, time.perf_counter(), jobs))
            return out

        setattr(broker, name, timed)

    def report(self, first: float, last: float) -> None:
        span = last - first
        calls = [c for c in self.log if c[2] > first and c[1] < last and c[3] > 0]
        for name in ("fetch", "finish"):
            mine = [c for c in calls if c[0] == name]
            if not mine:
                continue
            busy = sum(min(c[2], last) - max(c[1], first) for c in mine)
            print(f"    {name:6s} {len(mine):5d} calls, {sum(c[3] for c in mine) / len(mine):5.1f} "
                  f"jobs and {busy / len(mine) * 1e6:6.0f} µs each; in flight {busy / span:4.0%} "
                  "of the run")  # fmt: skip
        events = sorted([(max(c[1], first), 1, c[0]) for c in calls]
                        + [(min(c[2], last), -1, c[0]) for c in calls])  # fmt: skip
        open_ = {"fetch": 0, "finish": 0}
        both = at = 0.0
        for t, step, name in events:
            if open_["fetch"] and open_["finish"]:
                both += t - at
            open_[name] += step
            at = t
        print(f"    both in flight {both / span:4.0%} of the run")


def beam_cpu() -> float:
    """CPU seconds the machine's RabbitMQ (the oldest ``beam.smp``: ``rabbitmqctl`` runs one
    too) has used so far; 0 where there is none."""
    found: list[tuple[int, str]] = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "beam.smp":
                        with open(f"/proc/{pid}/stat") as g:
                            found.append((int(g.read().rpartition(")")[2].split()[19]), pid))
            except OSError:
                continue
    return _cpu_of(f"/proc/{min(found)[1]}/stat") if found else 0.0


def tickets_settled(app: Conveyor, timeout: float = 60.0) -> None:
    """Wait until RabbitMQ holds no ticket of the worker's (none ready, none in its buffers):
    a ticket settled after the last job is part of the drain's cost."""
    import aio_pika

    link = app.broker._link  # type: ignore[attr-defined]

    async def ready() -> int:
        async with await aio_pika.connect(link._url.connect) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(link.name("default"), passive=True)
            return queue.declaration_result.message_count or 0

    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        held = sum(len(b) for b in link._buffers.values()) + len(getattr(link, "_held", ()))
        quiet = quiet + 1 if not held and not asyncio.run(ready()) else 0


class Probe:
    def __init__(
        self,
        n: int,
        admin: redis.Redis | None,
        rabbitmq: bool = False,
        postgres: PostgresServer | None = None,
    ) -> None:
        self.n = n
        self.admin = admin
        self.postgres = postgres
        self.rabbitmq = rabbitmq
        self.beam = [0.0, 0.0]
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu = [0.0, 0.0]
        self.switches = [0, 0]  # context switches of this process (all threads)
        self.server = [0.0, 0.0]
        self.threads: list[dict[int, tuple[str, float]]] = []
        self.done = threading.Event()

    def hit(self) -> None:
        with self.lock:
            if self.count == 0:
                self.first = time.perf_counter()
                self._mark(0)
            self.count += 1
            if self.count == self.n:
                self.last = time.perf_counter()
                self._mark(1)
                self.done.set()

    def _mark(self, i: int) -> None:
        self.cpu[i] = time.process_time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.switches[i] = usage.ru_nvcsw + usage.ru_nivcsw
        if self.admin is not None:
            self.server[i] = main_thread_cpu_usec(self.admin) / 1e6
        elif self.postgres is not None:
            self.server[i] = server_cpu(self.postgres.data)
        if self.rabbitmq:
            self.beam[i] = beam_cpu()
        self.threads.append(thread_cpu())

    def per_job(self) -> dict[str, float]:
        """µs of CPU per job: the whole process, the redis-server, and each thread role.
        Per-thread times tick in 1/CLK_TCK s, too coarse for dozens of job threads that
        each run little, so "job threads" is the process total minus the other roles."""
        us = 1e6 / self.n
        total = self.cpu[1] - self.cpu[0]
        roles: dict[str, float] = {}
        before, after = self.threads
        for tid, (role, cpu) in after.items():
            if role != "job threads":
                roles[role] = roles.get(role, 0.0) + cpu - before.get(tid, (role, 0.0))[1]
        roles["job threads"] = total - sum(roles.values())
        out = {"worker": total * us}
        if self.admin is not None:
            out["redis-server"] = (self.server[1] - self.server[0]) * us
        elif self.postgres is not None:
            out["postgres"] = (self.server[1] - self.server[0]) * us
        if self.rabbitmq:
            out["beam.smp"] = (self.beam[1] - self.beam[0]) * us
        out.update((role, cpu * us) for role, cpu in roles.items() if cpu > 0)
        out[SWITCHES] = (self.switches[1] - self.switches[0]) / self.n
        return out


def one_run(
    url: str,
    admin: redis.Redis | None,
    n: int,
    *,
    concurrency: int,
    sleep: float,
    pool: str,
    commandstats: bool = False,
    calls: bool = False,
    events: bool = True,
    rabbitmq: RabbitServer | None = None,
    postgres: PostgresServer | None = None,
    log_line: bool = False,
) -> tuple[float, dict[str, float]]:
    store = {} if rabbitmq is None else {"store": url}
    if rabbitmq is not None:
        url = rabbitmq.fresh_vhost()
    if postgres is not None:
        url = postgres.fresh_database("drain")
    app = Conveyor(url, **store) if events else Conveyor(url, events=False, **store)
    probe = Probe(n, admin, rabbitmq is not None, postgres)

    @app.task(name="noop")
    def noop(i: int) -> int:
        if sleep:
            time.sleep(sleep)
        if log_line:
            JOB_LOG.info("job %d ran", i)
        probe.hit()
        return i

    @app.task(name="anoop")
    async def anoop(i: int) -> int:
        if sleep:
            await asyncio.sleep(sleep)
        probe.hit()
        return i

    task = anoop if pool == "async" else noop
    if admin is not None:
        admin.flushall()
    jobs = []
    for start in range(0, n, 1000):
        jobs += app.enqueue_many([task.s(i) for i in range(start, min(start + 1000, n))])
    if commandstats and admin is not None:
        admin.config_resetstat()
    traced = Calls(app.broker) if calls else None
    worker = Worker(app, concurrency=concurrency, pool=pool)
    thread = threading.Thread(target=worker.run, name="consumer")
    thread.start()
    if not probe.done.wait(120):
        worker.stop(graceful=False)
        raise SystemExit(f"only {probe.count} of {n} jobs ran in 120 s")
    if rabbitmq is not None:
        tickets_settled(app)
        probe.threads.pop()
        probe._mark(1)  # the CPU until the last ticket is settled
    worker.stop()
    thread.join()
    if commandstats and admin is not None:
        print_commandstats(admin.info("commandstats"), n)
    if traced is not None:
        traced.report(probe.first, probe.last)
    for i in (0, n // 2, n - 1):  # results stay on: spot-check a few
        assert jobs[i].result(timeout=5) == i, f"job {i}: wrong result"
    app.close()
    return n / (probe.last - probe.first), probe.per_job()


def print_commandstats(stats: dict[str, dict[str, float]], n: int) -> None:
    """The drain's server commands (those the worker sent, and those its scripts ran),
    per job: calls and µs, most costly first."""
    rows = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
    print(f"    {'command':<24} {'calls/job':>10} {'µs/job':>8} {'µs/call':>8}")
    for name, st in rows:
        if name.startswith("cmdstat_config") or name.startswith("cmdstat_info"):
            continue
        print(
            f"    {name.removeprefix('cmdstat_'):<24} {st['calls'] / n:>10.3f} "
            f"{st['usec'] / n:>8.2f} {st['usec_per_call']:>8.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("-c", "--concurrency", type=int, default=32)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds each job sleeps")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pool", choices=("threads", "async"), default="threads",
                    help="async: async def tasks (asyncio.sleep) on --pool async")  # fmt: skip
    ap.add_argument(
        "--commandstats",
        action="store_true",
        help="print each run's server commands per job (INFO commandstats)",
    )
    ap.add_argument(
        "--calls", action="store_true", help="time the worker's fetch and finish calls of each run"
    )
    ap.add_argument(
        "--events",
        choices=("on", "off"),
        default="on",
        help="publish job and worker events (the default), or Conveyor(events=False)",
    )
    ap.add_argument(
        "--rabbitmq", action="store_true", help="RabbitMQ delivers, the redis-server keeps"
    )
    ap.add_argument(
        "--memory",
        action="store_true",
        help="the in-process memory:// broker (no server: the worker's own cost alone)",
    )
    ap.add_argument(
        "--postgres",
        action="store_true",
        help="a private PostgreSQL (bench/pg_server.py), a fresh database per run",
    )
    ap.add_argument(
        "--log-line",
        action="store_true",
        help="each job logs one INFO line through the log setup of `conveyor worker` (stderr "
        "sent to a temporary file meanwhile)",
    )
    args = ap.parse_args()
    if args.log_line:
        with _stderr_to_file():
            _main(ap, args)
    else:
        _main(ap, args)


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[None]:
    """File descriptor 2 sent to a temporary file, and logging set up as ``conveyor worker
    --log-level info`` sets it: its handler writes to that descriptor."""
    from conveyor import _logging

    saved = os.dup(2)
    with tempfile.TemporaryFile() as out:
        os.dup2(out.fileno(), 2)
        try:
            _logging.configure("INFO", "text")
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            out.seek(0)
            print(f"stderr meanwhile: {sum(1 for _ in out):,} lines")


def _main(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.memory + args.rabbitmq + args.postgres > 1:
        ap.error("--memory, --rabbitmq and --postgres are exclusive")
    rabbit = RabbitServer() if args.rabbitmq else None
    no_redis = args.memory or args.postgres
    with (
        contextlib.nullcontext(None) if no_redis else private_redis() as server,
        private_postgres() if args.postgres else contextlib.nullcontext(None) as pg,
    ):
        admin = None if server is None else redis.Redis(port=server.port)
        url = "memory://" if server is None else server.url
        rates, cpus = [], []
        for _ in range(args.reps):
            rate, cpu = one_run(
                url,
                admin,
                args.n,
                concurrency=args.concurrency,
                sleep=args.sleep,
                pool=args.pool,
                commandstats=args.commandstats,
                calls=args.calls,
                events=args.events == "on",
                rabbitmq=rabbit,
                postgres=pg,
                log_line=args.log_line,
            )
            rates.append(rate)
            cpus.append(cpu)
            print(f"  {rate:,.0f} jobs/s; CPU µs/job: {_cpus(cpu)}", flush=True)
        medians = {k: statistics.median(c.get(k, 0.0) for c in cpus) for k in cpus[0]}
        where = " rabbitmq" if rabbit else " memory" if args.memory else ""
        where = " postgres" if args.postgres else where
        print(
            f"median of {args.reps}: {statistics.median(rates):,.0f} jobs/s "
            f"({min(rates):,.0f}-{max(rates):,.0f}); CPU µs/job: {_cpus(medians)}; "
            f"n={args.n} c={args.concurrency} sleep={args.sleep} pool={args.pool} "
            f"events={args.events}{where}{' log-line' if args.log_line else ''}"
        )
        if rabbit is not None:
            rabbit.drop_vhost()


def _cpus(cpu: dict[str, float]) -> str:
    times = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if k != SWITCHES)
    return f"{times}; context switches/job {cpu.get(SWITCHES, 0.0):.2f}"


if __name__ == "__main__":
    main()
