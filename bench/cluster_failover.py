"""What an acknowledged enqueue can lose when a Redis Cluster master dies, and what
``?wait=1`` costs to prevent it. Not part of ``make bench``.

On a private cluster of 3 masters with a replica each (``tests/redis_cluster.py``, on free
loopback ports, never the shared Redis), for each mode, without ``?wait`` and with
``?wait=1``:

* **cost**: ``delay()`` calls one after the other, the two modes alternated in rounds of
  ``--calls`` so a shared machine's noise falls on both: wall time per enqueue, and the
  ratio of the two;
* **loss**: producers enqueueing as fast as they can (``--threads`` threads, 20 jobs of a
  1 kB argument per call) while the master of the prefix's slot is killed with SIGKILL;
  once its replica has taken over, the acknowledged jobs whose record is not on the new
  master are lost. Once with the replica keeping up, once with it stopped (SIGSTOP) for
  ``--stall`` seconds before the kill, as a replica that lags (a slow network, a busy
  machine). Repeated ``--kills`` times per case, each on a fresh prefix.

    .venv/bin/python bench/cluster_failover.py
    .venv/bin/python bench/cluster_failover.py --kills 5 --threads 8
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' private cluster

from conveyor import Conveyor  # noqa: E402
from conveyor._errors import BrokerError  # noqa: E402
from redis_cluster import RedisClusterServers  # noqa: E402

MODES = {"async replication": "", "?wait=1": "?wait=1"}


def app_on(servers: RedisClusterServers, query: str, prefix: str) -> tuple[Conveyor, object]:
    app = Conveyor(servers.url + query, prefix=prefix)

    @app.task
    def noop(i: object) -> None: ...

    return app, noop


def cost(servers: RedisClusterServers, calls: int, rounds: int) -> dict[str, float]:
    """Median µs per delay() of each mode, over the rounds."""
    prefix = "cost" + uuid.uuid4().hex[:8]
    apps = {mode: app_on(servers, q, prefix) for mode, q in MODES.items()}
    took: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _, task in apps.values():
        task.delay(0)  # type: ignore[attr-defined]  # connect, load the script
    for _ in range(rounds):
        for mode, (_, task) in apps.items():
            start = time.perf_counter()
            for i in range(calls):
                task.delay(i)  # type: ignore[attr-defined]
            took[mode].append((time.perf_counter() - start) / calls * 1e6)
    for app, _ in apps.values():
        app.close()
    return {mode: statistics.median(t) for mode, t in took.items()}


def loss(servers: RedisClusterServers, query: str, threads: int, stall: float) -> tuple[int, int]:
    """(acknowledged, lost) for one kill of the prefix's master under producers, its replica
    stopped (SIGSTOP) for ``stall`` seconds just before: a replica that lags."""
    prefix = "loss" + uuid.uuid4().hex[:8]
    app, task = app_on(servers, query, prefix)
    acknowledged: list[str] = []
    stop = threading.Event()
    filler = "x" * 1000  # a 1 kB argument: a stalled replica's backlog outgrows the sockets

    def produce() -> None:
        while not stop.is_set():
            try:
                jobs = app.enqueue_many([task.s(filler) for _ in range(20)])  # type: ignore[attr-defined]
                acknowledged.extend(j.id for j in jobs)
            except BrokerError:
                time.sleep(0.05)

    producers = [threading.Thread(target=produce, daemon=True) for _ in range(threads)]
    for p in producers:
        p.start()
    time.sleep(1.0)
    master = servers.master_of(prefix)
    (replica,) = servers.replicas_of(master)
    assert replica.process is not None
    if stall:
        replica.process.send_signal(signal.SIGSTOP)
        time.sleep(stall)
    master.kill()
    replica.process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 60
    while servers.master_of(prefix) is not replica:
        if time.monotonic() > deadline:
            raise RuntimeError("no failover within 60 s")
        time.sleep(0.1)
    stop.set()
    for p in producers:
        p.join(30)
    records = app.broker.get(acknowledged)
    lost = sum(r is None for r in records)
    app.close()
    master.start()  # back as a replica, for the next kill
    servers.wait_ok()
    return len(acknowledged), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="delay() calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kills", type=int, default=3, help="master kills per mode")
    parser.add_argument("--threads", type=int, default=4, help="producer threads")
    parser.add_argument(
        "--stall", type=float, default=2.0, help="seconds the replica is stopped before the kill"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        servers = RedisClusterServers(Path(folder), node_timeout=1500)
        try:
            costs = cost(servers, args.calls, args.rounds)
            base = costs["async replication"]
            print(f"enqueue, one delay() after another ({args.rounds} x {args.calls} calls):")
            for mode, us in costs.items():
                print(f"  {mode:18} {us:7.0f} µs per job   x{us / base:.2f}")
            print(f"acknowledged enqueues lost per SIGKILL of the master ({args.threads} threads):")
            for stall in (0.0, args.stall):
                for mode, query in MODES.items():
                    found = [loss(servers, query, args.threads, stall) for _ in range(args.kills)]
                    shown = ", ".join(f"{lost} of {acked}" for acked, lost in found)
                    lag = f", replica stalled {stall:g} s" if stall else ""
                    print(f"  {mode + lag:40} {shown}")
        finally:
            servers.stop()


if __name__ == "__main__":
    main()
