"""The chaos soak (``chaos.py``, ``make chaos``) injects what it is asked to, says so, and
fails when it could not: a run that drained before its faults proves nothing.

Small runs on SQLite (a file in a temp dir), faults by progress only (``--kill-every 0``),
so what is injected does not depend on how fast this machine drains."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _chaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.torture.chaos", "--broker", "sqlite", "--workers", "2",
         "--concurrency", "4", "--kill-every", "0", "--seed", "7", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


@pytest.mark.timeout(150)  # ~3 s alone; a busy machine stretches it
def test_faults_are_injected_by_progress_and_counted() -> None:
    run = _chaos("--jobs", "3000")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert (
        "worker SIGKILLs: asked 3, injected 3 (3 of 3 at 10%, 30%, 60% of jobs ended, 0 by time)"
    ) in out
    kills = re.findall(r"SIGKILL a worker at (\d+)% \((\d+) jobs ended\)", out)
    assert [k for k, _ in kills] == ["10", "30", "60"]
    assert all(int(ended) < 3000 for _, ended in kills)  # while jobs were still running
    assert "lost 0," in out and "completed twice 0," in out


@pytest.mark.timeout(150)  # ~3 s alone; a busy machine stretches it
def test_a_run_that_injected_fewer_faults_than_asked_fails() -> None:
    run = _chaos("--jobs", "1500", "--kill-at", "0.5", "--kills", "2")
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "worker SIGKILLs: asked 2, injected 1 (1 of 1 at 50% of jobs ended, 0 by time)" in out
    assert "chaos: FAILED: 1 worker SIGKILLs injected while jobs ran, 2 asked" in out
    assert "lost 0," in out  # nothing else went wrong: the shortfall alone fails it
