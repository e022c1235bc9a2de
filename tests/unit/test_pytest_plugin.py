"""The pytest plugin, as a user's project meets it: pytest run in a fresh process on a small
project, finding the fixtures through the installed entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TASKS = """
from conveyor import Conveyor

app = Conveyor("sqlite:///production.db")   # never opened in the tests
beats = []
failures = {"left": 2}

@app.task(retries=3)
def resize(path: str, width: int) -> str:
    if failures["left"]:
        failures["left"] -= 1
        raise ConnectionError("storage is busy")
    return f"{path}@{width}"

@app.task
def add(a: int, b: int) -> int:
    return a + b

@app.periodic(every=60)
def beat() -> None:
    beats.append(app.clock.time())
"""

USES_THE_APP = """
import time
from conveyor import Conveyor
from conveyor.testing import FakeClock, drain
from myapp.tasks import add, app, beats, resize

def test_the_app_runs_on_memory_and_the_fake_clock(conveyor_app, conveyor_clock):
    assert conveyor_app is app
    assert isinstance(conveyor_clock, FakeClock) and app.clock is conveyor_clock
    job = resize.delay("a.png", 640)
    assert drain(app).ran == 3
    assert job.result() == "a.png@640"

def test_each_test_starts_on_an_empty_broker(conveyor_app):
    assert conveyor_app.broker.stats() == []

def test_a_worker_thread_runs_jobs_and_schedules(conveyor_worker, conveyor_app, conveyor_clock):
    assert add.delay(2, 3).result(timeout=10) == 5
    deadline = time.monotonic() + 10
    while not beats and time.monotonic() < deadline:  # the scheduler looks once a second
        conveyor_clock.advance(60)
        time.sleep(0.2)
    assert beats

def test_closing_the_app_in_the_code_under_test_keeps_the_memory_broker(conveyor_app):
    job = add.delay(1, 2)
    app.close()  # a web app's shutdown hook, run by the test client
    later = add.delay(2, 2)
    assert drain(app).ran == 2
    assert (job.result(), later.result()) == (3, 4)
    assert app.broker.url == "memory://"

def test_the_app_gets_its_own_broker_back_after_a_test():
    assert app.clock.__class__.__name__ == "SystemClock"
    assert app._broker is None
"""

FRESH_APP = """
from conveyor.testing import drain

def test_a_fresh_app_per_test(conveyor_app, conveyor_clock):
    assert conveyor_app.url == "memory://" and conveyor_app.clock is conveyor_clock

    @conveyor_app.task(retries=1)
    def double(x: int) -> int:
        return 2 * x

    job = double.options(delay=3600).delay(21)
    report = drain(conveyor_app)
    assert job.result() == 42 and report.advanced == 3600
"""

LIGHT = """
import sys

def test_loading_the_plugin_imported_nothing_but_conveyor_itself():
    assert "conveyor.testing.pytest_plugin" in sys.modules
    heavy = ["conveyor.worker", "conveyor.brokers.memory", "conveyor.scheduler", "redis",
             "sqlite3", "click", "rich"]
    assert [m for m in heavy if m in sys.modules] == []
"""


def _project(tmp_path: Path, ini: str, **files: str) -> Path:
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(TASKS)
    (tmp_path / "pytest.ini").write_text(f"[pytest]\npythonpath = .\n{ini}\n")
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    return tmp_path


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CONVEYOR_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(90)
def test_the_fixtures_run_a_projects_own_app(tmp_path: Path) -> None:
    folder = _project(tmp_path, "conveyor_app = myapp.tasks:app", test_app=USES_THE_APP)
    done = _pytest(folder, "-p", "no:randomly")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout
    assert not (folder / "production.db").exists()  # not even after app.close()


@pytest.mark.timeout(90)
def test_without_the_setting_each_test_gets_a_fresh_app(tmp_path: Path) -> None:
    folder = _project(tmp_path, "", test_fresh=FRESH_APP)
    done = _pytest(folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


@pytest.mark.timeout(90)
def test_a_bad_setting_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    folder = _project(tmp_path, "conveyor_app = myapp.tasks:add", test_fresh=FRESH_APP)
    done = _pytest(folder)
    assert done.returncode == 1
    assert "ConfigurationError" in done.stdout
    assert "conveyor_app = 'myapp.tasks:add'" in done.stdout


@pytest.mark.timeout(90)
def test_the_plugin_costs_a_run_that_does_not_use_it_only_import_conveyor(
    tmp_path: Path,
) -> None:
    folder = _project(tmp_path, "", test_light=LIGHT)
    done = _pytest(folder)
    assert done.returncode == 0, done.stdout + done.stderr
    done = _pytest(folder, "-p", "no:conveyor", "--fixtures")
    assert "conveyor_app" not in done.stdout  # and it can be turned off
