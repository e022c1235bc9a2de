"""On Redis, a worker never runs more jobs at once than its concurrency (a worker with
``--pool async -c 50`` once ran 201; see ``tests/unit/test_worker_concurrency.py``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_server import SERVER_BINARY, RedisServer, unique_prefix
from unit.test_worker_concurrency import CASES, run_concurrently

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(SERVER_BINARY is None, reason="no redis-server binary"),
]


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[Conveyor]:
    with Conveyor(redis_server.url, prefix=unique_prefix()) as a:
        yield a


@pytest.mark.parametrize(("pool", "kind"), CASES)
def test_jobs_running_at_once_never_exceed_concurrency(app: Conveyor, pool: str, kind: str) -> None:
    run_concurrently(app, pool, kind, concurrency=20, n=400)
