"""A Redis restart between a pipeline's script check and its EXEC (found by ``chaos.py``).

redis-py's ``Pipeline.execute`` runs ``load_scripts`` (SCRIPT EXISTS / SCRIPT LOAD) once,
then sends the transaction; if the connection drops there, its retry reconnects to the
restarted server, whose script cache is empty, and resends the EVALSHAs without loading
them again: every call fails with NOSCRIPT. The script never ran, so nothing was written:
the broker can run the batch again, and ``enqueue`` should succeed. Without that, the
producer gets a plain ``BrokerError`` (not even ``BrokerUnavailable``) for a batch whose
fate it cannot know without reading the message (as at commit 68fe6b6).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.client

from conveyor.brokers.redis import RedisBroker
from conveyor.testing.checker import check
from conveyor.testing.conformance import envelope
from redis_server import RedisServer, unique_prefix

from .conftest import stream_entries

pytestmark = pytest.mark.redis


@pytest.fixture
def restart_after_script_check(
    aof_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RedisServer]:
    """Restart the server (from its AOF) right after the next pipeline's script check."""
    original = redis.client.Pipeline.load_scripts
    armed = [True]

    def load_scripts(self: redis.client.Pipeline) -> None:
        original(self)  # type: ignore[no-untyped-call]
        if armed[0]:
            armed[0] = False
            aof_redis_server.restart()

    monkeypatch.setattr(redis.client.Pipeline, "load_scripts", load_scripts)
    yield aof_redis_server


@pytest.mark.timeout(30)
def test_a_batch_enqueued_across_a_redis_restart_is_written_once(
    aof_redis_server: RedisServer, restart_after_script_check: RedisServer, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    broker = RedisBroker(aof_redis_server.url, prefix=prefix)
    try:
        batch = [envelope("default") for _ in range(3)]
        ids = broker.enqueue(batch)  # NOSCRIPT from the retried EXEC, unless handled
        assert ids == [e.id for e in batch]
        written = stream_entries(aof_redis_server, prefix)
        report = check(acknowledged=ids, completed=written)
        report.assert_ok()
        assert sorted(written) == sorted(ids)  # once each
    finally:
        broker.close()
