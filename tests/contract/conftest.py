"""Run the conformance suites against every broker of ``tests/brokers.py`` on each of its
clocks.

Each test of ``test_conformance.py`` and ``test_value_conformance.py`` runs once per broker
and clock (ids ``[memory]``, ``[sqlite]``, ``[redis-fake]``, ``[redis-real]``: a broker
that runs on both clocks shows which), on a fresh broker opened through the registry from
the broker's URL and closed afterwards. On the real clock (``clock`` None) the tests sleep,
in units of ``BrokerConformance.real_time_unit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers import BROKERS, TestBroker
from conveyor._clock import FakeClock
from conveyor.brokers import Broker

# Before test_conformance.py imports the suite, so its failures show the values compared.
pytest.register_assert_rewrite("conveyor.testing.conformance")

CASES = [
    pytest.param(
        (b, clock), id=b.name if len(b.clocks) == 1 else f"{b.name}-{clock}", marks=b.marks
    )
    for b in BROKERS
    for clock in b.clocks
]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[TestBroker, str]:
    found: tuple[TestBroker, str] = request.param
    return found


@pytest.fixture
def clock(case: tuple[TestBroker, str]) -> FakeClock | None:
    """The clock the broker reads; None on the real clock."""
    return FakeClock() if case[1] == "fake" else None


@pytest.fixture
def broker(
    request: pytest.FixtureRequest,
    case: tuple[TestBroker, str],
    clock: FakeClock | None,
    tmp_path: Path,
) -> Iterator[Broker]:
    """A fresh broker of each kind, closed after the test."""
    with case[0].target(request, tmp_path).open(clock) as b:
        yield b
