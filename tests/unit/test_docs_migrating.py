"""docs/migrating.md: its Conveyor code (the ```python blocks; Celery's and RQ's are ```py)
runs as it is, in order, in one module, with a worker running beside it from the end of
its first block, on a memory broker. The code runs in a module already imported, as an
application's code does once it is loaded: the worker imports the plain functions it
enqueues from there."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"

# What the page says: "with a worker running". It starts once `app` exists, and stops at the end.
WORKER = """
import threading as _threading
from conveyor.worker import Worker as _Worker
_worker = _Worker(app, ["default", "images", "mail", "urgent"], concurrency=4,
                  grace=1.0, module=__name__)
_threading.Thread(target=_worker.run, daemon=True).start()
"""
STOP = "\n_worker.stop(graceful=False)\n"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.M | re.S)


def test_the_page_shows_conveyor_code_and_the_code_it_replaces() -> None:
    text = DOC.read_text()
    assert len(blocks()) >= 15
    assert text.count("```py\n") >= 15  # Celery's and RQ's, not run


@pytest.mark.timeout(60)
def test_the_conveyor_code_of_the_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, *rest = blocks()
    source = "\n".join([first, WORKER, *rest, STOP])
    (tmp_path / "migrating_snippets.py").write_text("")
    monkeypatch.setenv("CONVEYOR_URL", "memory://")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("migrating_snippets")
    try:
        exec(compile(source, str(DOC), "exec"), module.__dict__)
    finally:
        sys.modules.pop("migrating_snippets", None)
    assert module.job.result() == "a.png@640"
    assert module.cleanup.result() == 2
