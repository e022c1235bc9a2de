"""A private Redis Cluster under faults (``tests/redis_cluster.py``: 3 masters, 3 replicas of
the test's own, never the shared Redis): the master of the prefix's slot killed with
SIGKILL under load, its replica stalled just before (it takes over), then started again (it
comes back as a replica), on a prefix of one slot and on one sharded over six (the home's
master, which serves two of its shards); a slot migration started under the prefix's feet
(refused until it ends), and one shard's slot migrated under load on a sharded prefix; a
master serving some of a sharded prefix's shards restarted from its AOF.

With ``?wait=1`` an enqueue is acknowledged once the master's replica has it, so the
replica that takes over has every acknowledged job: nothing acknowledged is lost, no job
ends twice beyond those the kill cut short, and the workers live through it. Without it,
Redis replicates asynchronously and an acknowledged enqueue not yet sent to the replica
dies with the master (docs/cluster.md measures how many; ``bench/cluster_failover.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from conveyor import Conveyor, JobStatus, Signature
from conveyor._errors import BrokerUnavailable
from conveyor._message import JobRecord
from conveyor.worker._worker import PREFETCH_SLOTS
from redis_cluster import ClusterNode, RedisClusterServers, private_cluster
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
    _, settle = _migrate(servers, prefix)
    with pytest.raises(BrokerUnavailable, match="being migrated"):
        add.delay(3, 4)
    assert app.job(before.id).status is JobStatus.QUEUED  # a plain read is not refused
    target = settle()  # every key moved, the slot given to the target
    after = add.delay(5, 6)  # MOVED: the broker follows the slot to its new master
    late = loop.run_until_complete(add.delay_async(7, 8))  # and so does the asyncio client
    loop.close()
    assert servers.master_of(prefix) is target
    queued = app.broker.entries(JobStatus.QUEUED, None, 10)
    assert sorted(e.id for e in queued) == sorted(j.id for j in (before, early, after, late))
    app.close()


def _is_master(node: object) -> bool:
    return bool(node.client().execute_command("ROLE")[0] == b"master")  # type: ignore[attr-defined]


# -- a sharded prefix ------------------------------------------------------------------------------

SHARDS = 6


def _tags(servers: RedisClusterServers, prefix: str) -> list[str]:
    """The shards' hash tags, from the layout the prefix's home keeps (docs/cluster.md)."""
    raw = servers.master_of(prefix).client().get("{" + prefix + "}:shards")
    assert raw is not None, "the layout is written at first use"
    return list(json.loads(raw)["tags"])


@pytest.mark.timeout(120)
def test_a_shard_being_migrated_under_load_is_refused_until_it_is_settled(
    servers: RedisClusterServers, tmp_path: Path
) -> None:
    """One shard's slot migrated under a producer and a worker on a sharded prefix: every
    script call on that shard is refused with the migration's message, the other shards
    take enqueues meanwhile, and once the slot is settled on its new master the work goes
    on there: no acknowledged job lost, none run twice.

    The worker goes on with the other shards meanwhile: a look that meets the refusing
    shard returns what it claimed on the others (the test below holds it to that); the jobs
    it held on the migrating shard cannot renew or finish there, so their leases may lapse
    and they count a delivery more (hence ``--max-deliveries``)."""
    prefix = unique_prefix()
    cluster = Cluster(tmp_path / "app", f"{servers.url}?shards={SHARDS}", prefix)
    try:
        app = cluster.app()
        cluster.worker("w1", "-c", "4", "--lease", "2", "--max-deliveries", "100")
        producer = Producer(app, JOBS)
        wait_for(lambda: len(producer.acknowledged) >= JOBS // 3, 60, cluster.outputs)
        moving = 1
        tag = _tags(servers, prefix)[moving]
        slot, settle = _migrate(servers, tag)
        # The migrating shard's calls are refused, and the message says why and what to do.
        refused = f"being migrated .*slot {slot}, which holds the prefix's keys"
        with pytest.raises(BrokerUnavailable, match=refused) as caught:
            _send_to(app, f"m0.s{moving}")
        assert "Reshard this slot only while the prefix's producers" in str(caught.value)
        # The other shards take enqueues meanwhile; a plain read of a job not yet moved too.
        others = [_send_to(app, f"m{i}.s{i}") for i in range(SHARDS) if i != moving]
        assert app.job(producer.acknowledged[0]).status is not None
        time.sleep(3)  # under load: the worker's looks meet the migrating shard
        target = settle()
        assert servers.master_of(tag) is target
        late = _send_to(app, f"m{SHARDS}.s{moving}")  # MOVED: followed to the new master
        producer.thread.join(120)
        assert len(producer.acknowledged) == JOBS
        assert producer.errors > 0  # the producer met the migrating shard
        acknowledged = [*producer.acknowledged, *others, late]
        assert {app.broker.shard_of(t) for t in acknowledged} == set(range(SHARDS))
        _wait_ended(app, acknowledged)  # a result refused meanwhile is written on a retry
        # The jobs the worker held of that shard when it was refused (its 4 slots and its
        # buffer: ~20 ms of its 10 ms runs, 8, within 4 per slot) may run again: their
        # results and lease renewals on it are refused too, so a lease may lapse. None ends
        # twice.
        held = 4 * (1 + PREFETCH_SLOTS)
        assert_each_ran_once(cluster, app, acknowledged, 120, duplicates=held)
        assert "being migrated" in cluster.outputs()  # the worker was refused, and said why
        assert all(w.alive() for w in cluster.workers), cluster.outputs()
        app.close()
    finally:
        cluster.cleanup()


@pytest.mark.timeout(120)
def test_a_long_migration_of_one_shard_dead_letters_no_job_of_the_others(
    servers: RedisClusterServers, tmp_path: Path
) -> None:
    """A worker under load while one shard's slot migrates for 15 s: the jobs on the other
    shards must not be dead-lettered for deliveries they never ran (with
    ``--max-deliveries 2``, so that a look stranding what it claimed on the other shards
    when it meets the refusing one would show every time)."""
    prefix = unique_prefix()
    cluster = Cluster(tmp_path / "app", f"{servers.url}?shards={SHARDS}", prefix)
    try:
        app = cluster.app()
        cluster.worker("w1", "-c", "4", "--lease", "2", "--max-deliveries", "2")
        producer = Producer(app, JOBS // 3)
        wait_for(lambda: len(producer.acknowledged) >= JOBS // 6, 60, cluster.outputs)
        _, settle = _migrate(servers, _tags(servers, prefix)[1])
        time.sleep(15)
        settle()
        producer.thread.join(60)
        records = _wait_ended(app, producer.acknowledged)
        dead = [(r.id, r.reason) for r in records if r.status is JobStatus.DEAD]
        assert not dead, dead
        app.close()
    finally:
        cluster.cleanup()


@pytest.mark.timeout(180)
def test_a_master_serving_shards_restarted_under_load_loses_nothing_acknowledged(
    aof_redis_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    """The master of some of a sharded prefix's shards killed (SIGKILL) and started again
    from its AOF (fsynced before every reply) well within the node timeout, so no replica
    takes over, under a producer and a worker: every acknowledged job runs, the worker
    lives through it."""
    servers = aof_redis_cluster
    prefix = unique_prefix()
    cluster = Cluster(tmp_path / "app", f"{servers.url}?shards={SHARDS}", prefix)
    try:
        app = cluster.app()
        cluster.worker("w1", "-c", "4", "--lease", "2")
        producer = Producer(app, JOBS)
        wait_for(lambda: len(producer.acknowledged) >= JOBS // 3, 60, cluster.outputs)
        tags = _tags(servers, prefix)
        master = servers.master_of(tags[0])
        served = [i for i, t in enumerate(tags) if servers.master_of(t) is master]
        assert 0 < len(served) < SHARDS
        servers.restart_master_of(tags[0])
        assert servers.master_of(tags[0]) is master  # no failover: the same node, restarted
        producer.thread.join(120)
        assert len(producer.acknowledged) == JOBS
        assert {app.broker.shard_of(t) for t in producer.acknowledged} & set(served)
        # At most the jobs the worker's 4 threads held when the node died ran again.
        assert_each_ran_once(cluster, app, producer.acknowledged, 120, duplicates=4)
        assert all(w.alive() for w in cluster.workers), cluster.outputs()
        app.close()
    finally:
        cluster.cleanup()


def _migrate(servers: RedisClusterServers, tag: str) -> tuple[int, Callable[[], ClusterNode]]:
    """Start migrating the slot of ``{tag}`` to another master (``CLUSTER SETSLOT``); the
    slot, and a function that moves its keys (``MIGRATE``) and gives it to that master, as
    ``redis-cli --cluster reshard`` does, and returns the new master."""
    source = servers.master_of(tag)
    target = next(n for n in servers.nodes if n is not source and _is_master(n))
    slot = redis.crc.key_slot(tag.encode())
    ids = {n: n.client().execute_command("CLUSTER MYID").decode() for n in (source, target)}
    target.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
    source.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])

    def settle() -> ClusterNode:
        src = source.client()
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for n in servers.nodes:
            if n.process is not None and _is_master(n):
                n.client().execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
        servers.wait_ok()
        return target

    return slot, settle


def _wait_ended(app: Conveyor, job_ids: list[str], timeout: float = 60) -> list[JobRecord]:
    """The records of ``job_ids`` once every one has ended."""
    found: list[JobRecord] = []

    def ended() -> bool:
        found[:] = [r for r in app.broker.get(job_ids) if r is not None and r.status.terminal]
        return len(found) == len(job_ids)

    wait_for(ended, timeout, lambda: f"{len(found)} of {len(job_ids)} ended")
    return found


def _send_to(app: Conveyor, job_id: str) -> str:
    """Enqueue a ``torture_app`` job whose id names its shard (``<id>.s<i>``)."""
    opts = dataclasses.replace(app.defaults, job_id=job_id)
    app.enqueue_many([Signature(app, "torture_app:sleepy", (job_id, 0.01), {}, opts)])
    return job_id
