"""The same tasks run by a real `conveyor worker` process, as in production: what the unit
tests cannot show (the command line, trust, a separate process, SQLite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tasks import convert, fetch_rate

from conveyor import Conveyor, TaskFailed

HERE = Path(__file__).resolve().parent


@pytest.fixture
def worker_url(tmp_path: Path) -> Iterator[str]:
    """Start `conveyor worker tasks` on a SQLite file of its own; stop it with SIGTERM."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    env = dict(os.environ, CONVEYOR_URL=url, PYTHONPATH=str(HERE))
    # Its log goes to a file: a pipe nobody reads fills up (64 KiB: a few hundred failed
    # jobs' tracebacks) and the worker then blocks on its next log line.
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "tasks", "-c", "2"],
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield url
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
        assert code == 0, log.read_text()


@pytest.mark.timeout(60)
def test_a_worker_process_runs_the_tasks(worker_url: str) -> None:
    with Conveyor(worker_url) as producer:  # a producer of its own, on the worker's file
        rate = producer.enqueue(fetch_rate, "EUR")
        assert rate.result(timeout=30) == 1.0  # after a real retry, a real backoff
        assert producer.enqueue(convert, 1.08, 500).result(timeout=30) == 540


@pytest.mark.timeout(90)
def test_a_worker_that_logs_a_lot_keeps_going(worker_url: str) -> None:
    """Each failed job logs its traceback: far more than a pipe holds (see the fixture)."""
    with Conveyor(worker_url) as producer:
        failed = producer.enqueue_many([convert.s("not a rate", 5) for _ in range(300)])
        for job in failed:
            with pytest.raises(TaskFailed):
                job.result(timeout=30)
        assert producer.enqueue(convert, 2.0, 5).result(timeout=30) == 10
