"""Conveyor on a Redis Cluster with 1, 2 and 3 masters busy: jobs/s and server CPU µs per
job on each node, for W1b (``enqueue_many`` of a backlog) and W2 (draining it: no-op jobs,
32 threads). Not part of ``make bench``'s peer comparison.

A prefix lives on the master of its slot (docs/cluster.md), so a run with M masters busy
uses M apps, each with a prefix whose slot is on another master, each with its own
producer and in-process worker, all at once. On a 2-core machine the wall clock cannot
show the scale-out (the clients and three servers share the two cores): the figures that
matter are each busy master's CPU per job (``/proc/<pid>/stat`` of its ``redis-server``,
over the run) and their spread, and what the replicas spend following them.

    .venv/bin/python bench/cluster_scaling.py
    .venv/bin/python bench/cluster_scaling.py -n 20000 --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' private cluster

from conveyor import Conveyor  # noqa: E402
from conveyor.worker import Worker  # noqa: E402
from redis_cluster import ClusterNode, RedisClusterServers  # noqa: E402

from redis_server import RedisServer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
    """W1b then W2 of ``n`` jobs for each prefix at once; ``nodes``: the servers measured."""
    apps = [Conveyor(url, prefix=p) for p in prefixes]
    done = [threading.Event() for _ in apps]
    counts = [0] * len(apps)
    tasks = []
    for i, app in enumerate(apps):

        def hit(i: int = i) -> None:
            counts[i] += 1
            if counts[i] == n:
                done[i].set()

        @app.task(name="noop")
        def noop(k: int, hit: Callable[[], None] = hit) -> None:
            hit()

        tasks.append(noop)

    def produce(i: int) -> None:
        for start in range(0, n, 1000):
            apps[i].enqueue_many([tasks[i].s(k) for k in range(start, min(start + 1000, n))])

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
    for app in apps:
        app.close()
    return out


def baseline(folder: Path, n: int, reps: int) -> None:
    """The same on one plain redis-server (no cluster), for the ratio."""
    server = RedisServer(folder / "single")
    try:
        runs = [one_run(server.url, ["b" + uuid.uuid4().hex[:10]], [server], n)
                for _ in range(reps)]  # fmt: skip
        for work in ("W1b", "W2"):
            rate = statistics.median(r[work][0] for r in runs)
            us = statistics.median(r[work][1][server.port] for r in runs) * 1e6 / n
            print(f"  one redis-server {work:4} {rate:8.0f} jobs/s   {us:5.1f}")
    finally:
        server.stop()


def report(servers: RedisClusterServers, n: int, reps: int) -> None:
    roles = {m.port: m.client().execute_command("ROLE")[0] for m in servers.nodes}
    masters = [m for m in servers.nodes if roles[m.port] == b"master"]
    replica = {m.port: servers.replicas_of(m)[0].port for m in masters}
    print(f"{n} jobs per busy master, median of {reps} runs; server CPU µs per job of each "
          "busy master (its replica's in brackets)")  # fmt: skip
    for m in (1, 2, 3):
        busy = masters[:m]
        prefixes = prefixes_on(servers, busy)
        runs = [one_run(servers.url, prefixes, servers.nodes, n) for _ in range(reps)]
        for work in ("W1b", "W2"):
            rate = statistics.median(r[work][0] for r in runs)
            us = [statistics.median(r[work][1][b.port] for r in runs) * 1e6 / n for b in busy]
            rus = [
                statistics.median(r[work][1][replica[b.port]] for r in runs) * 1e6 / n for b in busy
            ]
            shown = "  ".join(f"{a:5.1f} ({b:4.1f})" for a, b in zip(us, rus, strict=True))
            print(f"  {m} master(s) {work:4} {rate:8.0f} jobs/s   {shown}   "
                  f"spread x{max(us) / min(us):.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="jobs per busy master")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        servers = RedisClusterServers(Path(folder))
        try:
            report(servers, args.n, args.reps)
            baseline(Path(folder), args.n, args.reps)
        finally:
            servers.stop()


if __name__ == "__main__":
    main()
