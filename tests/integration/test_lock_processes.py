"""Many processes contend for one lock on one SQLite file: no two ever hold it at once.

Each process records, while it holds the lock, when it entered and when it left (on
``time.monotonic_ns``, one system-wide clock on Linux and macOS) and its fencing token.
Sorted by entry, every interval must start after the previous one ended, and the fences must
grow in that same order.

The processes start (import conveyor, open the file) before the test lets them go all at
once: every one of them contends from its first grant to its last, however slowly the
machine starts interpreters.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("conveyor.brokers.sqlite") is None,
        reason="conveyor.brokers.sqlite is not written yet",
    ),
]

PROCESSES = 20
ROUNDS = 10  # grants per process

HOLDER = """
import os, random, sys, time
from conveyor import Conveyor

url, rounds, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spans = []
with Conveyor(url) as app:
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    for _ in range(rounds):
        with app.lock("shared-resource", ttl=30, timeout=60) as lk:
            entered = time.monotonic_ns()
            time.sleep(0.001)
            spans.append((entered, time.monotonic_ns(), lk.fence))
        time.sleep(random.uniform(0, 0.02))  # let the others in, not always the last holder
for span in spans:
    print(*span)
"""


@pytest.mark.timeout(150)  # 20 interpreters start on 2 cores
def test_processes_contending_for_one_lock_never_overlap(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/conveyor.db"
    go = tmp_path / "go"
    from conveyor import Conveyor

    with Conveyor(url) as app:  # create the file once, before the stampede
        app.store.set("ready", True)

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, url, str(ROUNDS), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for p in procs:  # all started, none contending yet
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n", p.communicate(timeout=60)[1][-2000:]
    t0 = time.monotonic()
    go.touch()
    spans: list[tuple[int, int, int]] = []
    failures: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            failures.append(err[-2000:])
        for line in out.splitlines():
            entered, left, fence = map(int, line.split())
            spans.append((entered, left, fence))
    elapsed = time.monotonic() - t0

    assert not failures, failures[0]
    assert len(spans) == PROCESSES * ROUNDS
    spans.sort()
    for (_, left_exit, left_fence), (right_enter, _, right_fence) in itertools.pairwise(spans):
        assert right_enter >= left_exit, "two processes held the lock at once"
        assert right_fence > left_fence
    assert elapsed < 60, f"{PROCESSES} processes took {elapsed:.1f}s"
