"""Fixtures of the torture suite: the fault proxy in front of a private redis-server, and
helpers that read a queue's streams.

Every Redis here is a private ``redis-server`` (``tests/redis_server.py``: the
``fresh_redis_server`` and ``aof_redis_server`` fixtures, ``private_redis``) on a free
loopback port, never the shared one on 6379: the tests kill it, restart it empty or from its
AOF.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from conveyor.brokers.redis._keys import GROUP, Keys
from redis_server import RedisServer

from .faultproxy import FaultProxy


def command_calls(server: RedisServer) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (from INFO commandstats)."""
    client = server.client()
    try:
        info = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def reset_command_stats(server: RedisServer) -> None:
    client = server.client()
    try:
        client.config_resetstat()
    finally:
        client.close()


@pytest.fixture
def proxy(fresh_redis_server: RedisServer) -> Iterator[FaultProxy]:
    """The fault proxy in front of ``fresh_redis_server``; connect through ``proxy.url``."""
    with FaultProxy(fresh_redis_server.port) as p:
        yield p


def stream_entries(server: RedisServer, prefix: str, queue: str = "default") -> list[str]:
    """Job ids of the entries in a queue's ten priority streams (undelivered and pending)."""
    client: redis.Redis = server.client()
    try:
        ids = []
        for stream in Keys(prefix).streams(queue):
            for _, fields in client.xrange(stream) or []:
                job = (fields or {})[b"job"]
                ids.append(job.decode() if isinstance(job, bytes) else job)
        return ids
    finally:
        client.close()


def pending_count(server: RedisServer, prefix: str, queue: str = "default") -> int:
    """Entries in the consumer groups' pending lists of a queue."""
    client: redis.Redis = server.client()
    try:
        total = 0
        for stream in Keys(prefix).streams(queue):
            if client.exists(stream) and client.xinfo_groups(stream):
                total += int(client.xpending(stream, GROUP)["pending"])
        return total
    finally:
        client.close()
