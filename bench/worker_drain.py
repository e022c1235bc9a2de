"""Drain N queued jobs through one ``conveyor worker`` process, as ``bench/run.py``'s W2 does
(a private redis-server, the bench's task module ``conveyor_runner``), and print jobs/s, the
worker's CPU µs and context switches per job: for what only shows in the worker command,
not in an in-process worker (``bench/profile_drain.py``), such as how its log handler writes.

    .venv/bin/python bench/worker_drain.py                  # no-op jobs, -c 32
    .venv/bin/python bench/worker_drain.py --log-line       # each job logs one INFO line
    .venv/bin/python bench/worker_drain.py -c 1 --reps 5

The worker's stderr goes to a file (appended to, as a supervisor's log file is). To compare
two checkouts, run it with ``PYTHONPATH=<checkout>/src`` in turn: the worker imports
Conveyor from there.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import probe  # noqa: E402
from redis_server import private_redis  # noqa: E402


def _switches(pid: int) -> int:
    """Context switches of all the process's threads so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:  # the thread ended meanwhile
            continue
    return total


def one_run(url: str, work: str, n: int, concurrency: int, task: str) -> tuple[float, float, float]:
    probe_dir = tempfile.mkdtemp(dir=work)
    env = dict(os.environ, BENCH_PROBE_DIR=probe_dir, BENCH_PROBE_N=str(n), BENCH_REDIS_URL=url)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    fill = (
        "import conveyor_runner as t\n"
        f"for s in range(0, {n}, 1000):\n"
        f"    t.app.enqueue_many([t.{task}.s(i) for i in range(s, min(s + 1000, {n}))])\n"
    )
    subprocess.run([sys.executable, "-c", fill], env=env, check=True)
    conveyor = os.path.join(os.path.dirname(sys.executable), "conveyor")
    command = [conveyor, "worker", "conveyor_runner", "--concurrency", str(concurrency)]
    with open(os.path.join(work, "worker.log"), "ab") as log:
        proc = subprocess.Popen(command, env=env, stderr=log, start_new_session=True)
    try:
        state: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while state.get("count") != n:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the worker did not run {n} jobs: see {work}/worker.log")
            time.sleep(0.02)
            state = next(iter(probe.read_all(probe_dir)), state)  # one worker: one report
        switches = _switches(proc.pid)  # start-up's included: a few hundred
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return n / (state["last"] - state["first"]), state["cpu"] * 1e6 / n, switches / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("-c", "--concurrency", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--log-line", action="store_true", help="each job logs one INFO line")
    args = ap.parse_args()
    task = "logline" if args.log_line else "noop"
    with private_redis() as server, tempfile.TemporaryDirectory() as work:
        runs = []
        for _ in range(args.reps):
            server.flush()
            rate, cpu, switches = one_run(server.url, work, args.n, args.concurrency, task)
            runs.append((rate, cpu, switches))
            print(f"  {rate:,.0f} jobs/s; worker CPU {cpu:.1f} µs/job; "
                  f"{switches:.2f} context switches/job", flush=True)  # fmt: skip
        print(
            f"median of {args.reps}: {statistics.median(r[0] for r in runs):,.0f} jobs/s; worker "
            f"CPU {statistics.median(r[1] for r in runs):.1f} µs/job; "
            f"{statistics.median(r[2] for r in runs):.2f} context switches/job; n={args.n} "
            f"c={args.concurrency} task={task}"
        )


if __name__ == "__main__":
    main()
