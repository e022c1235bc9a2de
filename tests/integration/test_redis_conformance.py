"""The conformance suite, unchanged, against RedisBroker on a private redis-server.

Twice: on a ``FakeClock`` (the broker keeps its own logical time, so leases, etas and TTLs
follow the injected clock without sleeping) and on real time (``clock`` None: what
production runs, sleeping in units of ``real_time_unit``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("conveyor.testing.conformance")

from conveyor._clock import FakeClock  # noqa: E402
from conveyor.brokers.redis import RedisBroker  # noqa: E402
from conveyor.testing.conformance import BrokerConformance, KeyValueConformance  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_server import RedisServer, unique_prefix  # noqa: E402

pytestmark = pytest.mark.redis


def _broker(server: RedisServer, clock: FakeClock | None) -> Iterator[RedisBroker]:
    broker = RedisBroker(server.url, prefix=unique_prefix(), clock=clock)
    try:
        yield broker
    finally:
        broker.close()


class _OnFakeClock:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def broker(self, redis_server: RedisServer, clock: FakeClock) -> Iterator[RedisBroker]:
        yield from _broker(redis_server, clock)


class _OnRealTime:
    @pytest.fixture
    def clock(self) -> None:
        return None

    @pytest.fixture
    def broker(self, redis_server: RedisServer, clock: None) -> Iterator[RedisBroker]:
        yield from _broker(redis_server, clock)


class TestRedisBrokerOnFakeClock(_OnFakeClock, BrokerConformance):
    pass


class TestRedisKeyValueOnFakeClock(_OnFakeClock, KeyValueConformance):
    pass


class TestRedisBrokerOnRealTime(_OnRealTime, BrokerConformance):
    pass


class TestRedisKeyValueOnRealTime(_OnRealTime, KeyValueConformance):
    pass
