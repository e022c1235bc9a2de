"""docs/getting-started.md works as written: its files, a real `conveyor worker`, the
commands it shows, and its test run by pytest, in a fresh folder on the default SQLite file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"


def files_of_the_page() -> dict[str, str]:
    """The blocks that begin with a comment naming their file (``# myapp/tasks.py``)."""
    named = re.compile(r"```(?:python|toml)\n# (\S+)[^\n]*\n(.*?)```", re.S)
    return dict(named.findall(DOC.read_text()))


def run(folder: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(120)
def test_the_getting_started_page_runs_as_written(tmp_path: Path) -> None:
    files = files_of_the_page()
    assert set(files) == {"myapp/tasks.py", "send.py", "pyproject.toml", "tests/test_tasks.py"}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    (tmp_path / "myapp" / "__init__.py").write_text("")
    # As on a developer's machine: no broker URL, so the app's default, ./conveyor.db.
    env = {k: v for k, v in os.environ.items() if k not in ("CONVEYOR_URL", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(tmp_path)

    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "myapp.tasks"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sent = run(tmp_path, env, "send.py").splitlines()
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    log = worker.stdout.read() if worker.stdout else ""
    assert code == 0, log
    assert sent[0].startswith("queued ") and sent[1] == "a.png@640", sent
    assert "resizing a.png to 640 px" in log
    assert f"broker sqlite:///{tmp_path}/conveyor.db" in log  # which file: the absolute path

    job_id = sent[0].removeprefix("queued ")
    shown = json.loads(run(tmp_path, env, "-m", "conveyor", "job", job_id, "--json"))
    assert shown["status"] == "succeeded" and shown["result"] == "a.png@640", shown
    listed = json.loads(run(tmp_path, env, "-m", "conveyor", "jobs", "succeeded", "--json"))
    assert [job["id"] for job in listed["jobs"]] == [job_id]

    tested = run(tmp_path, env, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
    assert "1 passed" in tested, tested
