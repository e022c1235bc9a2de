"""Run the conformance suite against every broker adapter registered in ``BROKER_FACTORIES``.

Each test of ``test_conformance.py`` runs once per adapter (ids ``[memory]``, ``[sqlite]``,
...), on a fresh broker built by the adapter's factory and closed afterwards.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from conveyor._clock import FakeClock
from conveyor.brokers import Broker

# Before test_conformance.py imports the suite, so its failures show the values compared.
pytest.register_assert_rewrite("conveyor.testing.conformance")

Build = Callable[[pytest.FixtureRequest, FakeClock | None], Broker]


@dataclass(frozen=True)
class BrokerFactory:
    module: str  # the adapter's module: its tests are skipped while it does not exist yet
    build: Build  # a fresh, empty broker on the given clock; other fixtures via the request
    fake_clock: bool = True  # False when the backend keeps its own time (Redis expiry)
    marks: tuple[pytest.MarkDecorator, ...] = ()


def _memory(request: pytest.FixtureRequest, clock: FakeClock | None) -> Broker:
    from conveyor.brokers.memory import MemoryBroker

    return MemoryBroker(clock=clock)


def _sqlite(request: pytest.FixtureRequest, clock: FakeClock | None) -> Broker:
    from conveyor.brokers.sqlite import SQLiteBroker

    tmp_path = request.getfixturevalue("tmp_path")
    return SQLiteBroker(str(tmp_path / "c.db"), clock=clock)


BROKER_FACTORIES: dict[str, BrokerFactory] = {
    "memory": BrokerFactory("conveyor.brokers.memory", _memory),
    "sqlite": BrokerFactory("conveyor.brokers.sqlite", _sqlite),
    # The redis factory plugs in here, e.g.
    #   "redis": BrokerFactory("conveyor.brokers.redis", _redis, fake_clock=False,
    #                          marks=(pytest.mark.redis,)),
    # where _redis(request, clock) gets a private server's URL from a fixture
    # (request.getfixturevalue(...)) and builds RedisBroker(url, prefix=<unique>, clock=...).
    # fake_clock=False: server-side expiry cannot follow a FakeClock, so those tests wait
    # real time (see BrokerConformance.real_time_unit).
}


def _param(name: str, factory: BrokerFactory) -> object:
    marks = list(factory.marks)
    if importlib.util.find_spec(factory.module) is None:
        marks.append(pytest.mark.skip(reason=f"{factory.module} is not written yet"))
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_param(name, f) for name, f in BROKER_FACTORIES.items()])
def broker_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def clock(broker_name: str) -> FakeClock | None:
    """The clock the broker reads; None when the adapter runs on real time only."""
    return FakeClock() if BROKER_FACTORIES[broker_name].fake_clock else None


@pytest.fixture
def broker(
    request: pytest.FixtureRequest, broker_name: str, clock: FakeClock | None
) -> Iterator[Broker]:
    """A fresh broker of each registered adapter, closed after the test."""
    b = BROKER_FACTORIES[broker_name].build(request, clock)
    try:
        yield b
    finally:
        b.close()
