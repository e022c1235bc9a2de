"""Short jobs buffered behind a run that turned long: how soon does a free worker get them?

Two ``conveyor worker -c 1`` processes on a private redis-server. The first runs 40 tiny
jobs (so its buffer is full: its runs are known to be short), then fetches a long job and
10 tiny ones in one call: the long one takes its slot, the tiny ones wait in its buffer.
The second worker starts then, idle. Printed: how long after the second worker started
the 10 tiny jobs were all done. A worker that keeps its buffer makes them wait for the
long job; one that hands it back (``BUFFER_PATIENCE``, docs/architecture.md) lets the
second worker run them about a second after the fetch. Not part of bench/run.py.

    .venv/bin/python bench/handback.py [--long 20] [--rounds 2]
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/handback.py   # another checkout's worker
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conveyor import Conveyor

from redis_server import RedisServer

APP = """\
import os, time
from conveyor import Conveyor

app = Conveyor(os.environ["HANDBACK_URL"])


@app.task(name="tiny")
def tiny(n: int) -> int:
    return n


@app.task(name="long")
def long(seconds: float) -> str:
    time.sleep(seconds)
    return "long"
"""


def one_round(url: str, folder: str, long_seconds: float) -> float:
    app = Conveyor(url)
    tiny = app.task(name="tiny")(lambda n: n)
    long = app.task(name="long")(lambda seconds: "long")
    env = dict(os.environ, HANDBACK_URL=url)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), folder) if p)
    argv = [sys.executable, "-m", "conveyor", "worker", "handback_app", "-c", "1"]

    def worker() -> subprocess.Popen[bytes]:
        out = subprocess.DEVNULL
        return subprocess.Popen(argv, env=env, cwd=folder, stdout=out, stderr=out)

    procs = [worker()]
    try:
        warm = app.enqueue_many([tiny.s(i) for i in range(40)])
        for job in warm:
            job.result(timeout=60)
        batch = app.enqueue_many([long.s(long_seconds), *(tiny.s(i) for i in range(10))])
        time.sleep(0.3)  # the first worker fetched them: the long one runs
        procs.append(worker())
        started = time.monotonic()
        for job in batch[1:]:
            job.result(timeout=long_seconds + 60)
        took = time.monotonic() - started
        batch[0].result(timeout=long_seconds + 60)
        return took
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        app.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--long", type=float, default=20.0, help="seconds the long job runs")
    p.add_argument("--rounds", type=int, default=2)
    opts = p.parse_args()
    server = RedisServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "handback_app.py").write_text(APP)
            for _ in range(opts.rounds):
                server.flush()
                took = one_round(server.url, folder, opts.long)
                print(f"10 tiny jobs done {took:.1f} s after the idle worker started "
                      f"(the long job: {opts.long:g} s)")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
