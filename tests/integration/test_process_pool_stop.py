"""A ``conveyor worker --pool processes`` stopped while its children still import the app (a
big app, a deploy's SIGTERM a moment after the start): it kills them and exits 0 at once,
instead of waiting up to two minutes per child and then reporting that its shutdown overran
the grace, as if the broker did not answer."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from brokers import by_name
from conftest import Project, children_of, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc").exists(), reason="finds children in /proc")

SLOW_CHILD_IMPORT = """

import sys

if sys.argv[0].endswith("_child.py"):  # only a pool process's import takes a minute
    time.sleep(60)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("broker_kind", [by_name("sqlite")], ids=["sqlite"], indirect=True)
def test_sigterm_while_pool_processes_import_the_app_kills_them_and_exits_0(
    project: Project,
) -> None:
    with open(project.root / "jobs_app.py", "a") as f:
        f.write(SLOW_CHILD_IMPORT)
    worker = project.worker("--pool", "processes", "-c", "2", "--grace", "1", ready=False)
    wait_for(lambda: len(children_of(worker.proc.pid)) == 2, 30, worker.output)
    children = children_of(worker.proc.pid)
    began = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    assert time.monotonic() - began < 4, worker.output()  # not the grace and 5 s more
    assert "did not end" not in worker.output()
    assert "ERROR" not in worker.output()
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
