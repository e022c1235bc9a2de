"""Two stop signals close together (``timeout``, a supervisor signalling a process group, an
impatient Ctrl-C twice) stop a ``conveyor worker`` at once, every time: the signal handler
records them and the main thread acts on them outside it, so the second cannot interrupt
the first while it holds a lock and hang the worker for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

APP = """
from conveyor import Conveyor

app = Conveyor()

@app.task
def noop() -> None: ...
"""


def _started(proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    """Wait for the worker's start line (it installs its handlers before it logs it)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "conveyor worker " in line and "queues default" in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"the worker did not start (exit {proc.poll()})")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT,) * 3])
def test_stop_signals_back_to_back_never_hang_the_worker(
    tmp_path: Path, signals: tuple[signal.Signals, ...]
) -> None:
    (tmp_path / "sigapp.py").write_text(textwrap.dedent(APP))
    env = dict(
        os.environ, CONVEYOR_URL=f"sqlite:///{tmp_path / 'jobs.db'}", PYTHONPATH=str(tmp_path)
    )
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "sigapp"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _started(proc)
            for signum in signals:
                proc.send_signal(signum)
            code = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == 0, (attempt, code)
