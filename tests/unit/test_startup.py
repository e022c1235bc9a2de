"""What the ``conveyor`` command's process leaves unloaded until it is used (docs/architecture.md,
"Start-up"): each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_redis_py_imported_by_the_command_leaves_importlib_metadata_unloaded() -> None:
    code = (
        "import sys; from conveyor.cli import _deferred; _deferred.defer_all(); import redis;"
        "import conveyor.brokers.redis; print('email' in sys.modules, 'zipfile' in sys.modules)"
    )
    assert _run(code) == "False False"


def test_a_deferred_module_works_as_usual_when_used() -> None:
    code = (
        "from conveyor.cli import _deferred; _deferred.defer_all(); import redis;"
        "import importlib.metadata as m; from importlib.metadata import version;"
        "import importlib; print(version('redis') == redis.__version__, m is importlib.metadata,"
        " type(m).__name__)"
    )
    assert _run(code) == "True True module"


def test_threads_using_a_deferred_module_at_once_all_get_it_loaded() -> None:
    code = (
        "import threading; from conveyor.cli import _deferred; _deferred.defer_all();"
        "import importlib.metadata as m; found = [];"
        "go = threading.Barrier(8);"
        "run = lambda: (go.wait(), found.append(m.version('redis')));"
        "ts = [threading.Thread(target=run) for _ in range(8)];"
        "[t.start() for t in ts]; [t.join() for t in ts]; print(len(set(found)), len(found))"
    )
    assert _run(code) == "1 8"


def test_the_command_reads_its_version_from_the_deferred_metadata() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conveyor", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("conveyor, version ")
