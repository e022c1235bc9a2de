"""What a new connection to Redis sends before its first command (docs/architecture.md,
"Start-up, fourth round")."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.brokers.redis import _connect
from redis_server import RedisServer

pytestmark = pytest.mark.redis


def _commands(server: RedisServer) -> dict[str, int]:
    """The server's command counts, without the INFO that asks for them."""
    stats = server.client().info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


def test_a_new_connection_sends_its_handshake_without_a_health_check_ping(
    fresh_redis_server: RedisServer,
) -> None:
    before = _commands(fresh_redis_server)  # the fixture's own (a PING while it waits)
    target = _connect.parse(fresh_redis_server.url + "?health_check_interval=15")
    client = _connect.connect(target)
    assert _connect.Pinned().call(client, "SET", "k", "v") in (True, b"OK", "OK")
    assert client.get("k") == b"v"
    aclient = _connect.connect_async(target)

    async def read() -> object:
        return await aclient.get("k")

    assert asyncio.run(read()) == b"v"
    after = _commands(fresh_redis_server)
    seen = {name: n - before.get(name, 0) for name, n in after.items()}
    assert seen.get("ping", 0) == 0
    assert seen["hello"] >= 2 and seen["set"] == 1 and seen["get"] == 2
    client.close()
