"""``ValueConformance`` against RedisBroker on a private redis-server, on real time (what
production runs): values and payloads arrive exactly as sent, or are refused before
anything is written."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("conveyor.testing.conformance")

from conveyor.brokers.redis import RedisBroker  # noqa: E402
from conveyor.testing.conformance import ValueConformance  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_server import RedisServer, unique_prefix  # noqa: E402

pytestmark = pytest.mark.redis


class TestRedisValues(ValueConformance):
    @pytest.fixture
    def clock(self) -> None:
        return None

    @pytest.fixture
    def broker(self, redis_server: RedisServer, clock: None) -> Iterator[RedisBroker]:
        broker = RedisBroker(redis_server.url, prefix=unique_prefix(), clock=clock)
        try:
            yield broker
        finally:
            broker.close()
