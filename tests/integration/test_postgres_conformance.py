"""The conformance suites, unchanged, against PostgresBroker on the machine's PostgreSQL
(a database of the session's own; ``tests/postgres_server.py``). The tests of a class share
one schema, emptied before each test (a fresh broker on an empty schema, without a
migration per test).

Twice: on a ``FakeClock`` (the client passes its time to every statement, so leases, etas
and TTLs follow the injected clock without sleeping) and on real time (``clock`` None: the
server's clock, what production runs, sleeping in units of ``real_time_unit``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.register_assert_rewrite("conveyor.testing.conformance")

from conveyor._clock import FakeClock  # noqa: E402
from conveyor.testing.conformance import (  # noqa: E402
    BrokerConformance,
    KeyValueConformance,
    ValueConformance,
)
from postgres_server import drop_schema, empty_schema, schema_url, unique_schema  # noqa: E402

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="class")
def schema(postgres_url: str) -> Iterator[str]:
    name = unique_schema()
    try:
        yield name
    finally:
        drop_schema(postgres_url, name)


def _broker(url: str, schema: str, clock: FakeClock | None) -> Iterator[object]:
    from conveyor.brokers.postgres import PostgresBroker

    empty_schema(url, schema)
    broker = PostgresBroker(schema_url(url, schema), clock=clock)
    try:
        yield broker
    finally:
        broker.close()


class _OnFakeClock:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def broker(self, postgres_url: str, schema: str, clock: FakeClock) -> Iterator[object]:
        yield from _broker(postgres_url, schema, clock)


class _OnRealTime:
    @pytest.fixture
    def clock(self) -> None:
        return None

    @pytest.fixture
    def broker(self, postgres_url: str, schema: str, clock: None) -> Iterator[object]:
        yield from _broker(postgres_url, schema, clock)


class TestPostgresBrokerOnFakeClock(_OnFakeClock, BrokerConformance):
    pass


class TestPostgresKeyValueOnFakeClock(_OnFakeClock, KeyValueConformance):
    pass


class TestPostgresBrokerOnRealTime(_OnRealTime, BrokerConformance):
    pass


class TestPostgresKeyValueOnRealTime(_OnRealTime, KeyValueConformance):
    pass


class TestPostgresValues(_OnRealTime, ValueConformance):
    pass
