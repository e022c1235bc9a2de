"""A private Redis Cluster under faults (``tests/redis_cluster.py``: 3 masters, 3 replicas of
the test's own, never the shared Redis): the master of the prefix's slot killed with
SIGKILL under load, its replica stalled just before (it takes over), then started again (it
comes back as a replica), on a prefix of one slot and on one sharded over six (the home's
master, which serves two of its shards); a slot migration started under the prefix's feet
(refused until it ends).

With ``?wait=1`` an enqueue is acknowledged once the master's replica has it, so the
replica that takes over has every acknowledged job: nothing acknowledged is lost, no job
ends twice beyond those the kill cut short, and the workers live through it. Without it,
Redis replicates asynchronously and an acknowledged enqueue not yet sent to the replica
dies with the master (docs/cluster.md measures how many; ``bench/cluster_failover.py``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
import redis

from conveyor import Conveyor, JobStatus
from conveyor._errors import BrokerUnavailable
from redis_cluster import RedisClusterServers, private_cluster
from redis_server import unique_prefix

from .workers import Cluster, Producer, assert_each_ran_once, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.redis]

JOBS = 300
NODE_TIMEOUT_MS = 1500  # a quick failover, on a cluster of the test's own


@pytest.fixture
def servers(tmp_path: Path) -> RedisClusterServers:
    found = private_cluster(tmp_path / "cluster", node_timeout=NODE_TIMEOUT_MS)
    yield found  # type: ignore[misc]
    found.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shards", ["", "&shards=6"], ids=["one-slot", "sharded"])
def test_a_master_killed_under_load_loses_no_acknowledged_job_with_wait(
    servers: RedisClusterServers, tmp_path: Path, shards: str
) -> None:
    """Sharded: the master killed is the prefix's home's, which also serves two of its six
    shards; the jobs of the other four go on meanwhile."""
    prefix = unique_prefix()
    cluster = Cluster(tmp_path / "app", servers.url + "?wait=1" + shards, prefix)
    try:
        app = cluster.app()
        for name in ("w1", "w2"):
            cluster.worker(name, "-c", "4", "--lease", "2")
        producer = Producer(app, JOBS)
        wait_for(lambda: len(producer.acknowledged) >= JOBS // 3, 60, cluster.outputs)
        master = servers.master_of(prefix)
        (replica,) = servers.replicas_of(master)
        assert replica.process is not None
        # A replica that lags: without ?wait=1 what the master acknowledged meanwhile would
        # die with it (bench/cluster_failover.py loses most of it); here none is acknowledged.
        replica.process.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        master.kill()
        replica.process.send_signal(signal.SIGCONT)
        wait_for(lambda: servers.master_of(prefix) is replica, 60, cluster.outputs)
        master.start()  # the old master comes back as the new one's replica
        producer.thread.join(120)
        assert len(producer.acknowledged) == JOBS
        assert producer.errors > 0  # the failover was felt by the producer
        # At most the jobs two workers of 4 threads held when the master died ran again.
        assert_each_ran_once(cluster, app, producer.acknowledged, 120, duplicates=8)
        assert all(w.alive() for w in cluster.workers), cluster.outputs()
        servers.wait_ok()
        assert master.client().execute_command("ROLE")[0] == b"slave"
        app.close()
    finally:
        cluster.cleanup()


@pytest.mark.timeout(120)
def test_a_slot_being_migrated_refuses_every_call_until_it_is_settled(
    servers: RedisClusterServers,
) -> None:
    """Resharding the prefix's slot under load could cut a script half-way (a job hash
    moved, its queue not yet): while the slot is migrating, Redis refuses every call up
    front (the never-written key each script declares is missing there), and the broker
    says why. Once the slot is settled on its new master, the broker follows it."""
    prefix = unique_prefix()
    app = Conveyor(servers.url, prefix=prefix)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    before = add.delay(1, 2)
    loop = asyncio.new_event_loop()  # its client's connections outlive the migration
    early = loop.run_until_complete(add.delay_async(0, 1))
    source = servers.master_of(prefix)
    target = next(n for n in servers.nodes if n is not source and _is_master(n))
    slot = redis.crc.key_slot(prefix.encode())
    ids = {n: n.client().execute_command("CLUSTER MYID").decode() for n in (source, target)}
    target.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
    source.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
    with pytest.raises(BrokerUnavailable, match="being migrated"):
        add.delay(3, 4)
    assert app.job(before.id).status is JobStatus.QUEUED  # a plain read is not refused
    # Move every key, then give the slot to the target, as redis-cli --cluster reshard does.
    src = source.client()
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for n in servers.nodes:
        if n.process is not None and _is_master(n):
            n.client().execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    servers.wait_ok()
    after = add.delay(5, 6)  # MOVED: the broker follows the slot to its new master
    late = loop.run_until_complete(add.delay_async(7, 8))  # and so does the asyncio client
    loop.close()
    assert servers.master_of(prefix) is target
    queued = app.broker.entries(JobStatus.QUEUED, None, 10)
    assert sorted(e.id for e in queued) == sorted(j.id for j in (before, early, after, late))
    app.close()


def _is_master(node: object) -> bool:
    return bool(node.client().execute_command("ROLE")[0] == b"master")  # type: ignore[attr-defined]
