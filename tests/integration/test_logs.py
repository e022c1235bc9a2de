"""JSON logs from a real worker process on a SQLite file: every line on stderr is one JSON
object, the task's own line names its job, and a failure is a WARNING with its traceback,
from pool threads and from pool processes alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TASKS = """
import logging, pathlib
from conveyor import Conveyor

app = Conveyor(f"sqlite:///{pathlib.Path(__file__).with_name('jobs.db')}")
log = logging.getLogger(__name__)


@app.task(queue="images")
def resize(name: str) -> str:
    log.info("resizing %s", name, extra={"width": 640})
    logging.getLogger("somelib").info("a library's chatter, below WARNING")
    return name


@app.task(queue="images")
def explode() -> None:
    raise RuntimeError("the disk is full")
"""

SCRIPT = """
import sys, threading, time
from conveyor import _logging
from conveyor.worker import Worker

_logging.configure("INFO", "json")  # what conveyor worker --log-format json does
import logtasks

done, failed = logtasks.resize.delay("a.png"), logtasks.explode.delay()
print(done.id, failed.id, flush=True)
worker = Worker(logtasks.app, ["images"], pool=sys.argv[1], module="logtasks", concurrency=2)


def stop_when_both_finished() -> None:
    while worker.processed < 2:
        time.sleep(0.02)
    worker.stop()


threading.Thread(target=stop_when_both_finished, daemon=True).start()
worker.run()
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_every_stderr_line_is_json_and_task_lines_name_their_job(tmp_path: Path, pool: str) -> None:
    (tmp_path / "logtasks.py").write_text(textwrap.dedent(TASKS))
    (tmp_path / "run_worker.py").write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "run_worker.py", pool],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    done_id, failed_id = proc.stdout.split()
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # each one parses
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)

    (task_line,) = [x for x in lines if x["logger"] == "logtasks"]
    assert task_line["message"] == "resizing a.png" and task_line["width"] == 640
    assert task_line["job_id"] == done_id and task_line["task"] == "logtasks:resize"
    assert (task_line["queue"], task_line["attempt"], task_line["level"]) == ("images", 0, "INFO")

    (failure,) = [x for x in lines if x["level"] == "WARNING"]
    assert failure["logger"] == "conveyor.worker" and failure["job_id"] == failed_id
    assert failure["message"].endswith("builtins.RuntimeError: the disk is full")
    assert failure["traceback"].endswith("RuntimeError: the disk is full")
    assert 'raise RuntimeError("the disk is full")' in failure["traceback"]

    assert not [x for x in lines if x["logger"] == "somelib"]  # other loggers: WARNING up
    banner = next(x for x in lines if x["message"].startswith("conveyor worker "))
    assert "job_id" not in banner  # written outside any job
