"""The Django project of ``conveyor.contrib.django``'s tests (``tests/django_project``).

``django_project`` (session) sets Django up in this process, once (Django's settings are
global), with the project's SQLite database and Conveyor's SQLite broker in a fresh folder,
and creates the tables. Only the tests that ask for it pay for it, and only in the process
that runs them. ``django_worker`` starts ``manage.py conveyor_worker`` (Django's
``python -m django``, the same command line) on that project in a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import django
    from django.core.management import call_command

    folder = tmp_path_factory.mktemp("django_project")
    # Read once, by django.setup(): the environment is put back after it, so that the
    # subprocesses other tests start (the example's manage.py) do not inherit them.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVEYOR_TEST_DIR", str(folder))
        env.setenv("DJANGO_SETTINGS_MODULE", "django_project.settings")
        django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    return folder


def worker_env(folder: Path) -> dict[str, str]:
    env = dict(os.environ, CONVEYOR_TEST_DIR=str(folder), PYTHONPATH=str(TESTS))
    env["DJANGO_SETTINGS_MODULE"] = "django_project.settings"
    env.pop("CONVEYOR_URL", None)
    env.pop("PYTHONSAFEPATH", None)
    return env


@pytest.fixture
def django_worker(django_project: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``start(*options)``: ``python -m django conveyor_worker *options`` on the project,
    stopped with SIGTERM (and checked to exit 0) after the test."""
    started: list[tuple[subprocess.Popen[str], Path]] = []

    def start(*options: str) -> subprocess.Popen[str]:
        log = django_project / f"worker{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", "conveyor_worker", *options],
            env=worker_env(django_project),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append((proc, log))
        deadline = time.monotonic() + 30
        while "conveyor worker" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        return proc

    yield start
    for proc, log in started:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
