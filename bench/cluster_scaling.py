"""Conveyor on a Redis Cluster with 1, 2 and 3 masters busy: jobs/s and server CPU µs per
job on each node, for W1b (``enqueue_many`` of a backlog) and W2 (draining it: no-op jobs,
32 threads), beside one plain ``redis-server`` and one prefix sharded over the three
masters (``?shards=6``). ``make bench`` runs it (the ``cluster`` of
``BENCH_BACKENDS``) and it writes its section of docs/benchmarks.md.

A prefix lives on the master of its slot (docs/cluster.md), so a run with M masters busy
uses M apps, each with a prefix whose slot is on another master, each with its own
producer and in-process worker, all at once. On a 2-core machine the wall clock cannot
show the scale-out (the clients and three servers share the two cores): the figures that
matter are each busy master's CPU per job (``/proc/<pid>/stat`` of its ``redis-server``,
over the run) and their spread, and what the replicas spend following them.

    .venv/bin/python bench/cluster_scaling.py                  # writes docs/benchmarks.md
    .venv/bin/python bench/cluster_scaling.py --quick          # bench/.results/, a tenth
    .venv/bin/python bench/cluster_scaling.py -n 20000 --reps 5 --quiet-budget 0
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' private cluster

from conveyor import Conveyor  # noqa: E402
from conveyor.worker import Worker  # noqa: E402
from redis_cluster import ClusterNode, RedisClusterServers  # noqa: E402

from machine import QuietGate, quiet_options  # noqa: E402
from machine import facts as machine_facts  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from report import with_section  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SHARDS = 6  # the sharded run: one prefix over this many shards, two per master


def prefixes_on(servers: RedisClusterServers, masters: list[ClusterNode]) -> list[str]:
    """A prefix whose slot is on each of ``masters``, in order."""
    found: dict[int, str] = {}
    while len(found) < len(masters):
        prefix = "b" + uuid.uuid4().hex[:10]
        port = servers.master_of(prefix).port
        if port in {m.port for m in masters}:
            found.setdefault(port, prefix)
    return [found[m.port] for m in masters]


def cpu_of(nodes: list[RedisServer]) -> dict[int, float]:
    """CPU seconds (user + system) each running node's process has used so far."""
    out = {}
    for n in nodes:
        if n.process is not None:
            fields = Path(f"/proc/{n.process.pid}/stat").read_text().rpartition(")")[2].split()
            out[n.port] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def timed(
    nodes: list[RedisServer], work: list[Callable[[], None]]
) -> tuple[float, dict[int, float]]:
    """Run each piece of work in a thread of its own, all at once: wall seconds, and CPU
    seconds each node spent meanwhile."""
    before = cpu_of(nodes)
    threads = [threading.Thread(target=w) for w in work]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    after = cpu_of(nodes)
    return took, {port: after[port] - before[port] for port in after}


Run = dict[str, tuple[float, dict[int, float]]]  # workload -> (jobs/s, CPU s by node port)


def one_run(url: str, prefixes: list[str], nodes: list[RedisServer], n: int) -> Run:
    """W1b then W2 of ``n`` jobs for each prefix at once; ``nodes``: the servers measured.
    The same prefix named several times (a sharded one): one app, producer and worker per
    name, on that prefix, each worker running whichever jobs it takes, until all ran."""
    apps = [Conveyor(url, prefix=p) for p in prefixes]
    shared = len(set(prefixes)) < len(prefixes)
    done = [threading.Event() for _ in apps]
    counts = [0] * len(apps)
    lock = threading.Lock()
    tasks = []
    for i, app in enumerate(apps):

        def hit(i: int = i) -> None:
            with lock:
                if shared:  # every worker waits for all the jobs
                    counts[0] += 1
                    if counts[0] == n * len(apps):
                        for e in done:
                            e.set()
                    return
                counts[i] += 1
                if counts[i] == n:
                    done[i].set()

        @app.task(name="noop")
        def noop(k: int, hit: Callable[[], None] = hit) -> None:
            hit()

        tasks.append(noop)

    placed = [0] * apps[0].broker.shards  # jobs per shard (a sharded prefix: its placement)

    def produce(i: int) -> None:
        for start in range(0, n, 1000):
            jobs = apps[i].enqueue_many([tasks[i].s(k) for k in range(start, min(start + 1000, n))])
            with lock:
                for job in jobs:
                    placed[apps[i].broker.shard_of(job.id)] += 1

    def drain(i: int) -> None:
        worker = Worker(apps[i], concurrency=32)
        thread = threading.Thread(target=worker.run)
        thread.start()
        if not done[i].wait(300):
            raise SystemExit(f"only {counts[i]} of {n} jobs ran in 300 s")
        worker.stop()
        thread.join()

    out: dict[str, tuple[float, dict[int, float]]] = {}
    for name, fn in (("W1b", produce), ("W2", drain)):
        took, cpu = timed(nodes, [lambda i=i, fn=fn: fn(i) for i in range(len(apps))])
        out[name] = (len(apps) * n / took, cpu)
    if len(placed) > 1:
        print_placement(placed, nodes, out)
    for app in apps:
        app.close()
    return out


def print_placement(placed: list[int], nodes: list[RedisServer], run: Run) -> None:
    """A sharded run: the jobs each shard and master got, and each master's CPU per job it
    got (the row's figure divides by the same ``n`` for every master, so it also carries
    how evenly the jobs were placed)."""
    masters = sorted(n.port for n in nodes if n.client().execute_command("ROLE")[0] == b"master")
    got = [sum(placed[i :: len(masters)]) for i in range(len(masters))]  # shard i: master i % M
    print(f"  jobs per shard {placed}, per master {got}: spread x{max(got) / max(min(got), 1):.2f}")
    for work, (_, cpu) in run.items():
        each = [cpu[port] * 1e6 / max(g, 1) for port, g in zip(masters, got, strict=True)]
        print(f"  {work} µs per job each master got: " + ", ".join(f"{e:.1f}" for e in each)
              + f": spread x{max(each) / max(min(each), 1e-9):.2f}", flush=True)  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One workload with ``busy`` masters busy (0: one plain redis-server), medians over
    the runs: jobs/s of all together, server CPU µs per job of each busy master and of its
    replica."""

    busy: int
    work: str
    rate: float
    masters: tuple[float, ...]
    replicas: tuple[float, ...] = ()
    sharded: int = 0  # one prefix over this many shards (0: a prefix per master)

    @property
    def spread(self) -> float:
        return max(self.masters) / min(self.masters) if min(self.masters) else float("inf")


def measure(
    servers: RedisClusterServers, single: RedisServer, n: int, reps: int, gate: QuietGate
) -> tuple[list[Row], float]:
    """Each repetition runs 1, 2 and 3 busy masters, then the plain server, in turn; the
    rows, and how busy the machine was at the start of a run, at most."""
    roles = {m.port: m.client().execute_command("ROLE")[0] for m in servers.nodes}
    masters = [m for m in servers.nodes if roles[m.port] == b"master"]
    replica = {m.port: servers.replicas_of(m)[0].port for m in masters}
    setups: list[tuple[int, str, list[str], list[RedisServer], list[int]]] = [
        (m, servers.url, prefixes_on(servers, masters[:m]), list(servers.nodes),
         [b.port for b in masters[:m]])
        for m in (1, 2, 3)
    ]  # fmt: skip
    setups.append((0, single.url, ["b" + uuid.uuid4().hex[:10]], [single], [single.port]))
    # One prefix over SHARDS shards on the three masters, three producers and workers on it.
    setups.append((-3, f"{servers.url}?shards={SHARDS}", ["b" + uuid.uuid4().hex[:10]] * 3,
                   list(servers.nodes), [b.port for b in masters]))  # fmt: skip
    runs: dict[int, list[Run]] = {m: [] for m, *_ in setups}
    busiest = 0.0
    for rep in range(reps):
        for m, url, prefixes, nodes, _ in setups:
            busiest = max(busiest, gate.wait())
            runs[m].append(one_run(url, prefixes, nodes, n))
            shown = "one server" if m == 0 else f"one prefix, {SHARDS} shards" if m < 0 else m
            print(f"[rep {rep + 1}/{reps}] {shown}: "
                  + ", ".join(f"{w} {r[0]:,.0f} jobs/s" for w, r in runs[m][-1].items()),
                  flush=True)  # fmt: skip
    rows = []
    for work in ("W1b", "W2"):
        for m, _, _, _, ports in setups:

            def us(port: int, m: int = m, work: str = work) -> float:
                return statistics.median(r[work][1][port] for r in runs[m]) * 1e6 / n

            rows.append(Row(
                abs(m), work, statistics.median(r[work][0] for r in runs[m]),
                tuple(us(p) for p in ports),
                tuple(us(replica[p]) for p in ports) if m else (),
                SHARDS if m < 0 else 0,
            ))  # fmt: skip
    return rows, busiest


def render(rows: list[Row], meta: dict[str, Any]) -> str:
    """The section of docs/benchmarks.md."""
    lone = {r.work: r.masters[0] for r in rows if r.busy == 0}
    out = [
        "## On a Redis Cluster",
        "",
        "Written by `bench/cluster_scaling.py` (`make bench`, the `cluster` of "
        "`BENCH_BACKENDS`). Conveyor only, on a private cluster of 3 masters and 3 replicas "
        f"({meta['server']}, loopback): W1b enqueues {meta['n']:,} jobs per busy master with "
        "`enqueue_many`, 1,000 at a time; W2 drains them with one in-process worker of 32 "
        "threads per busy master; each busy master has a prefix of its own, its producer and "
        "its worker, all at once; the sharded row has one prefix over "
        f"{SHARDS} shards (`?shards={SHARDS}`, two per master) with three producers and "
        "three workers on it, the same jobs in all. Median of "
        f"{meta['reps']} runs, interleaved with one plain `redis-server` (no cluster, no "
        "replica) running the same. Server CPU is read from `/proc/<pid>/stat` of each "
        "`redis-server` over the run (10 ms ticks). On 2 cores the clients and the servers "
        "share the machine, so jobs/s cannot show the scale-out: the figure is the CPU per "
        "job of each node, and its spread over the busy masters "
        "([the model](cluster.md#throughput-over-masters)).",
        "",
        "| busy masters | workload | jobs/s, all together | server CPU µs per job: each busy "
        "master (its replica) | spread over the masters | a master ÷ one redis-server |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.busy:
            each = ", ".join(
                f"{a:.1f} ({b:.1f})" for a, b in zip(r.masters, r.replicas, strict=True)
            )
            mean = statistics.mean(r.masters)
            spread = f"x{r.spread:.2f}" if r.busy > 1 else "—"
            busy = f"{r.busy}: one prefix, {r.sharded} shards" if r.sharded else str(r.busy)
            out.append(f"| {busy} | {r.work} | {r.rate:,.0f} | {each} | {spread} | "
                       f"x{mean / lone[r.work]:.2f} |")  # fmt: skip
        else:
            out.append(f"| one redis-server | {r.work} | {r.rate:,.0f} | {r.masters[0]:.1f} | "
                       "— | x1.00 |")  # fmt: skip
    la, lb = meta["load_before"], meta["load_after"]
    out += [
        "",
        f"Run {meta['started']}, {meta['minutes']:.1f} min; {meta['cpu']}, {meta['cores']} "
        f"cores; {meta['python']}; commit {meta['commit']}; `{meta['command']}`. Load average "
        f"{la[0]:.2f} before, {lb[0]:.2f} after; the machine was at most "
        f"{meta['busiest']:.0%} busy when a run started (quiet gate: wait for "
        f"{meta['gate'][0]:.0%} within {meta['gate'][2]:.0f} s, waited {meta['gate'][1]:.0f} s).",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="jobs per busy master")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the jobs")
    parser.add_argument("--out", default=None, help="the markdown page its section goes in")
    quiet_options(parser)
    args = parser.parse_args()  # fmt: skip
    n = max(args.n // 10, 100) if args.quick else args.n
    out = args.out or (
        str(HERE / ".results" / "benchmarks-cluster-quick.md")
        if args.quick
        else str(HERE.parent / "docs" / "benchmarks.md")
    )
    gate = QuietGate(args.quiet_below, args.quiet_budget)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        servers = RedisClusterServers(Path(folder) / "cluster")
        single = RedisServer(Path(folder) / "single")
        try:
            version = single.client().info("server")["redis_version"]
            rows, busiest = measure(servers, single, n, args.reps, gate)
        finally:
            single.stop()
            servers.stop()
    meta = {
        **machine_facts(str(HERE.parent)),
        "server": f"redis-server {version}",
        "n": n,
        "reps": args.reps,
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (dt.datetime.now(dt.UTC) - started).total_seconds() / 60,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "busiest": busiest,
        "gate": (args.quiet_below, gate.waited, args.quiet_budget),
        "command": " ".join([".venv/bin/python bench/cluster_scaling.py", *sys.argv[1:]]),
    }
    text = render(rows, meta)
    print()
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    old = Path(out).read_text() if os.path.exists(out) else ""
    Path(out).write_text(with_section(old, "bench/cluster_scaling.py", text))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
