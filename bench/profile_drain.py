"""Drain N queued jobs through one in-process Conveyor worker on a private redis-server and
print jobs/s, the worker's CPU µs per job and the redis-server's CPU µs per job: the figures
behind "Where a job's time goes" in docs/architecture.md. Not part of bench/run.py (which
compares against the peers).

    .venv/bin/python bench/profile_drain.py                      # W2-like: 10,000 no-ops, 32 slots
    .venv/bin/python bench/profile_drain.py --sleep 0.01 -n 2000 -c 50   # W4-like
    .venv/bin/py-spy record -r 500 -f raw -o /tmp/drain.txt -- \\
        .venv/bin/python bench/profile_drain.py --reps 1 -n 30000          # where the time goes

Timing is the same as bench/run.py's: first task start to last task end, so start-up and
the enqueue of the backlog are excluded. CPU is this process's (all threads) over that span.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from conveyor import Conveyor
from conveyor.worker import Worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Probe:
    def __init__(self, n: int, server_pid: int) -> None:
        self.n = n
        self.server_pid = server_pid
        self.server0 = 0.0
        self.server1 = 0.0
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu0 = 0.0
        self.cpu1 = 0.0
        self.done = threading.Event()

    def hit(self) -> None:
        with self.lock:
            if self.count == 0:
                self.first = time.perf_counter()
                self.cpu0 = time.process_time()
                self.server0 = process_cpu(self.server_pid)
            self.count += 1
            if self.count == self.n:
                self.last = time.perf_counter()
                self.cpu1 = time.process_time()
                self.server1 = process_cpu(self.server_pid)
                self.done.set()


def one_run(
    url: str, server_pid: int, n: int, concurrency: int, sleep: float
) -> tuple[float, float, float]:
    app = Conveyor(url)
    probe = Probe(n, server_pid)

    @app.task(name="noop")
    def noop(i: int) -> int:
        if sleep:
            time.sleep(sleep)
        probe.hit()
        return i

    app.broker._client.flushall()  # type: ignore[attr-defined]
    jobs = []
    for start in range(0, n, 1000):
        jobs += app.enqueue_many([noop.s(i) for i in range(start, min(start + 1000, n))])
    worker = Worker(app, concurrency=concurrency)
    thread = threading.Thread(target=worker.run)
    thread.start()
    if not probe.done.wait(120):
        worker.stop(graceful=False)
        raise SystemExit(f"only {probe.count} of {n} jobs ran in 120 s")
    worker.stop()
    thread.join()
    for i in (0, n // 2, n - 1):  # results stay on: spot-check a few
        assert jobs[i].result(timeout=5) == i, f"job {i}: wrong result"
    wall = probe.last - probe.first
    app.close()
    return n / wall, (probe.cpu1 - probe.cpu0) / n * 1e6, (probe.server1 - probe.server0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("-c", "--concurrency", type=int, default=32)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds each job sleeps")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="conveyor-prof-")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        rates, cpus, servers = [], [], []
        for _ in range(args.reps):
            rate, cpu, on_server = one_run(url, server.pid, args.n, args.concurrency, args.sleep)
            rates.append(rate)
            cpus.append(cpu)
            servers.append(on_server)
            print(
                f"  {rate:,.0f} jobs/s, {cpu:.1f} µs CPU/job, redis-server {on_server:.1f} µs/job",
                flush=True,
            )
        print(
            f"median of {args.reps}: {statistics.median(rates):,.0f} jobs/s "
            f"({min(rates):,.0f}-{max(rates):,.0f}), "
            f"{statistics.median(cpus):.1f} µs CPU/job, "
            f"redis-server {statistics.median(servers):.1f} µs CPU/job; "
            f"n={args.n} c={args.concurrency} sleep={args.sleep}"
        )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
