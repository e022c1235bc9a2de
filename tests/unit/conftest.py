"""Fixtures shared by the unit tests of features built on the key-value port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor._clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Conveyor]:
    """An app on each embedded broker whose TTLs run on ``clock`` (test modules that need
    another app define their own ``app`` fixture, which takes precedence)."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/conveyor.db"
    with Conveyor(url, clock=clock) as a:
        yield a
