"""Spawn -> first job of ``conveyor worker`` from this checkout and from another, alternated
on one private redis-server: the before/after of a start-up change in one run. Not part of
the run (``bench/run.py --workloads startup`` compares against the peers).

    git archive 07d0312 src | tar -x -C /tmp/old
    .venv/bin/python bench/startup_compare.py --old /tmp/old/src --spawns 10
    .venv/bin/python bench/startup_compare.py --old /tmp/old/src --callgrind 3

Each spawn: one job is queued (through the same checkout's client), the worker command is
started, and the time runs from just before the spawn to the job's start as the task notes
it; the CPU time is what the worker process had used by then. With ``--callgrind N`` each
checkout's worker runs N times under valgrind's callgrind instead, and ends at its first
job's start (the task's probe call exits the process): the instructions it ran from the
interpreter's start to there, which the machine's load does not change. Both checkouts and
the benchmark's app (``bench/``, as ``run.py`` does) are byte-compiled first: with
``PYTHONDONTWRITEBYTECODE`` set, the app module would otherwise be compiled at every start.
They run in ``bench/.venv-peers/conveyor`` (the runtime dependencies only) when
``install.py`` made it.
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import probe  # noqa: E402
from redis_server import private_redis  # noqa: E402

T = TypeVar("T")
ENQUEUE = "import conveyor_runner as r; r.noop.delay(0); r.app.close()"
# ``conveyor worker`` as ``python -m conveyor`` runs it, ended when the first job starts.
AT_FIRST_JOB_EXIT = (
    "import os, runpy, sys, probe; probe.hit = lambda *a, **k: os._exit(0); "
    "sys.argv = ['conveyor', 'worker', 'conveyor_runner', '-c', '8']; "
    "runpy.run_module('conveyor', run_name='__main__', alter_sys=True)"
)


def spawn(python: str, env: dict[str, str]) -> tuple[float, float]:
    """One start-up: (ms spawn -> first job, ms of CPU the worker had used by then)."""
    subprocess.run([python, "-c", ENQUEUE], env=env, cwd=HERE, check=True)
    with tempfile.TemporaryDirectory() as probe_dir:
        env = dict(env, BENCH_PROBE_DIR=probe_dir, BENCH_PROBE_N="1")
        argv = [python, "-m", "conveyor", "worker", "conveyor_runner", "-c", "8"]
        t0 = time.time()
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=HERE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not (states := [s for s in probe.read_all(probe_dir) if s["count"]]):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker ran no job (exit code {proc.returncode})")
                time.sleep(0.002)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    state = states[0]
    return (float(state["first"]) - t0) * 1000, float(state["cpu_first"]) * 1000


def instructions(python: str, env: dict[str, str], keep: str | None) -> int:
    """One start-up under callgrind: the instructions from the interpreter's start to the
    first job's (its profile copied into ``keep``, for ``callgrind_annotate``)."""
    subprocess.run([python, "-c", ENQUEUE], env=env, cwd=HERE, check=True)
    with tempfile.TemporaryDirectory() as out:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out"]
        proc = subprocess.run(
            [*argv, python, "-c", AT_FIRST_JOB_EXIT],
            env=env,
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(f"{out}/callgrind.out", tempfile.mkstemp(".out", "callgrind.", keep)[1])
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"the worker did not reach its first job:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, metavar="DIR", help="the other checkout's src/")
    p.add_argument("--spawns", type=int, default=10, help="start-ups per checkout")
    p.add_argument(
        "--callgrind", type=int, default=0, metavar="N",
        help="instead: N start-ups per checkout under valgrind, their instruction counts",
    )  # fmt: skip
    p.add_argument("--keep", metavar="DIR", help="with --callgrind: keep the profiles in DIR")
    args = p.parse_args()
    python = os.path.join(HERE, ".venv-peers", "conveyor", "bin", "python")
    python = python if os.path.exists(python) else sys.executable
    trees = {"this checkout": os.path.join(ROOT, "src"), "--old": os.path.abspath(args.old)}
    for src in trees.values():
        compileall.compile_dir(src, quiet=1)
    compileall.compile_dir(HERE, quiet=1, maxlevels=1)
    if args.callgrind:
        counts = alternated(trees, args.callgrind, lambda env, name: instructions(
            python, env, os.path.join(args.keep, name.strip("-").replace(" ", "-"))
            if args.keep else None))  # fmt: skip
        for name, found in counts.items():
            shown = ", ".join(f"{n / 1e6:.1f}" for n in found)
            print(f"{name:<14} instructions to the first job: median "
                  f"{statistics.median(found) / 1e6:.1f} M ({shown})")  # fmt: skip
        return 0
    for name, runs in alternated(trees, args.spawns, lambda env, _: spawn(python, env)).items():
        wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
        print(
            f"{name:<14} spawn -> first job: median {statistics.median(wall):.0f} ms "
            f"(min {min(wall):.0f}, max {max(wall):.0f}); CPU until then: median "
            f"{statistics.median(cpu):.0f} ms (min {min(cpu):.0f})"
        )
    return 0


def alternated(
    trees: dict[str, str], runs: int, measure: Callable[[dict[str, str], str], T]
) -> dict[str, list[T]]:
    """``measure(env, name)`` run ``runs`` times per checkout, in turn (the order swapped
    every round), on one private redis-server."""
    found: dict[str, list[T]] = {name: [] for name in trees}
    with private_redis() as server:
        base = dict(os.environ, BENCH_REDIS_URL=server.url, BENCH_CONCURRENCY="8")
        base.update(BENCH_IO_ADDR="127.0.0.1:1", BENCH_LIB="conveyor")
        for i in range(runs):
            order = list(trees.items())
            for name, src in order if i % 2 == 0 else order[::-1]:
                env = dict(base, PYTHONPATH=os.pathsep.join([src, HERE]))
                found[name].append(measure(env, name))
    return found


if __name__ == "__main__":
    sys.exit(main())
