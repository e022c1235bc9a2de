"""The Redis broker on a private Redis Cluster (``tests/redis_cluster.py``: 3 masters, 3
replicas; never the shared Redis): where a prefix's keys live, prefixes and store keys
spread over the masters, the asyncio path, ``?wait=``, logins.

The conformance suites, the model, the broker races and the worker torture tests run on
the cluster too (``redis-cluster`` in ``tests/brokers.py``); the faults (a master killed,
a slot migrated) are in ``tests/torture/test_redis_cluster_faults.py``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import redis

from conveyor import BrokerAuthError, BrokerUnavailable, Conveyor
from redis_cluster import RedisClusterServers, private_cluster
from redis_server import unique_prefix

pytestmark = [pytest.mark.redis]


def _nodes_holding(servers: RedisClusterServers, pattern: str) -> set[int]:
    """Ports of the masters holding keys that match ``pattern``."""
    found = set()
    for n in servers.nodes:
        c = n.client()
        if c.execute_command("ROLE")[0] == b"master" and c.keys(pattern):
            found.add(n.port)
    return found


def test_a_prefix_lives_on_the_master_of_its_slot_and_prefixes_spread(
    redis_cluster: RedisClusterServers,
) -> None:
    prefixes = [unique_prefix() for _ in range(12)]
    for prefix in prefixes:
        app = Conveyor(redis_cluster.url, prefix=prefix)

        @app.task
        def double(x: int) -> int:
            return 2 * x

        job = double.delay(21)
        app.store.set(f"k-{prefix}", "v")
        master = redis_cluster.master_of(prefix)
        # Every broker key is on that one master; the job is read back from it.
        assert _nodes_holding(redis_cluster, f"{{{prefix}}}:*") == {master.port}
        assert master.client().exists(f"{{{prefix}}}:job:{job.id}")
        assert app.job(job.id).status.value == "queued"
        assert app.store.get(f"k-{prefix}") == "v"
        app.close()
    # Twelve prefixes land on more than one master (1 in 3**11 that they do not).
    assert len({redis_cluster.master_of(p).port for p in prefixes}) > 1


def test_a_dead_first_seed_is_passed_over_at_once(redis_cluster: RedisClusterServers) -> None:
    # Regression: each slot owner asked a refused seed with redis-py's default retries
    # (8.x), ~3.5 s each, and a prefix of 6 shards has 7 owners: 25 s before the first call.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends: nothing listens there
    live = redis_cluster.url.removeprefix("redis+cluster://")
    app = Conveyor(f"redis+cluster://127.0.0.1:{dead},{live}/?shards=6", prefix=unique_prefix())
    try:
        began = time.monotonic()
        app.broker.stats()
        assert time.monotonic() - began < 3.0  # a refused connect each, not retried
    finally:
        app.close()


def test_store_keys_spread_over_the_masters(redis_cluster: RedisClusterServers) -> None:
    prefix = unique_prefix()
    app = Conveyor(redis_cluster.url, prefix=prefix)
    for i in range(30):
        app.store.set(f"key{i}", i)
    with app.lock(f"lock-{prefix}", ttl=5):
        pass
    assert [app.store.get(f"key{i}") for i in range(30)] == list(range(30))
    assert len(_nodes_holding(redis_cluster, f"{{{prefix}:kv:*")) == 3
    app.close()


def test_the_asyncio_path_enqueues_and_waits_on_the_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    prefix = unique_prefix()
    app = Conveyor(redis_cluster.url + "?wait=1&wait_timeout=10", prefix=prefix)  # a loaded CI

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> list[str]:
        jobs = [await add.delay_async(i, i) for i in range(5)]
        return [j.id for j in jobs]

    ids = asyncio.run(main())
    records = app.broker.get(ids)
    assert [r is not None and r.status.value for r in records] == ["queued"] * 5
    app.close()


def test_wait_refuses_to_acknowledge_an_enqueue_no_replica_has(tmp_path: Path) -> None:
    servers = private_cluster(tmp_path / "cluster")
    try:
        prefix = unique_prefix()
        # A timeout a loaded machine's replica meets for the first job; the second waits it out.
        app = Conveyor(servers.url + "?wait=1&wait_timeout=2", prefix=prefix)

        @app.task
        def noop() -> None: ...

        kept = noop.delay()
        (replica,) = servers.replicas_of(servers.master_of(prefix))
        replica.kill()
        refused = r"only 0 of the 1 replica\(s\).* within 2 s"
        with pytest.raises(BrokerUnavailable, match=refused) as caught:
            noop.delay()
        assert "?wait=1" in str(caught.value)
        # Without ?wait= the same master acknowledges at once.
        plain = Conveyor(servers.url, prefix=prefix)

        @plain.task
        def other() -> None: ...

        assert [r is not None for r in plain.broker.get([kept.id, other.delay().id])] == [
            True,
            True,
        ]
        app.close()
        plain.close()
    finally:
        servers.stop()


def test_a_password_cluster_logs_in_and_a_wrong_password_says_so(tmp_path: Path) -> None:
    servers = private_cluster(tmp_path / "cluster", password="s3cret:@x")
    try:
        good = servers.url.replace("://", "://:s3cret%3A%40x@")
        app = Conveyor(good, prefix=unique_prefix())

        @app.task
        def noop() -> None: ...

        assert app.job(noop.delay().id).status.value == "queued"
        app.store.set("k", "v")
        assert app.store.get("k") == "v"
        app.close()
        bad = Conveyor(servers.url.replace("://", "://:wrong@"), prefix=unique_prefix())
        with pytest.raises(BrokerAuthError, match="refused the login") as caught:
            bad.broker.stats()
        assert "wrong" not in str(caught.value)
        bad.close()
        with pytest.raises(redis.AuthenticationError):  # the nodes really require it
            redis.Redis(port=servers.nodes[0].port).ping()
    finally:
        servers.stop()
