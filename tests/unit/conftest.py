"""Fixtures shared by the unit tests: apps on the embedded brokers, and task modules written
to disk for the tests whose pool processes import them by name."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from brokers import params
from conveyor import Conveyor
from conveyor._clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=params(embedded=True))
def app(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Conveyor]:
    """An app on each embedded broker (``tests/brokers.py``) whose TTLs run on ``clock``
    (test modules that need another app define their own ``app`` fixture, which takes
    precedence)."""
    with Conveyor(request.param.target(request, tmp_path).url, clock=clock) as a:
        yield a


@pytest.fixture(scope="module")
def write_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str, str], ModuleType]]:
    """``write_module(name, source)`` writes ``source`` as module ``name`` in a fresh folder on
    ``sys.path`` (pool processes inherit it) and imports it; the folder leaves ``sys.path``
    after the test module."""
    folders: list[str] = []

    def write(name: str, source: str) -> ModuleType:
        folder = tmp_path_factory.mktemp(name)
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        folders.append(str(folder))
        sys.path.insert(0, str(folder))
        return importlib.import_module(name)

    yield write
    for folder in folders:
        sys.path.remove(folder)
