"""One prefix sharded over a Redis Cluster (``?shards=S``) and on one server: jobs of one
queue on every shard and every master, a worker draining them all, the commands showing
merged figures, workflows and dependencies on a sharded prefix, and the layout fixed at
first use (a plain broker, or another S, refused with what to do).

The conformance suites, the model, the broker races and the worker torture tests run on
both (``redis-sharded``, ``redis-cluster-sharded`` in ``tests/brokers.py``).
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import Project, conveyor
from conveyor import Conveyor
from conveyor._errors import (
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    ValidationError,
)
from conveyor._message import Envelope, JobStatus
from conveyor.brokers import Broker, open_broker
from conveyor.brokers.redis import _shardfetch
from conveyor.brokers.redis._shards import mint
from conveyor.scheduler import Scheduler
from conveyor.testing import drain
from conveyor.workflows import chain, chord
from redis_cluster import RedisClusterServers
from redis_server import RedisServer, unique_prefix

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

TASKS = """
from conveyor import Conveyor

app = Conveyor()  # CONVEYOR_URL, with ?prefix= and ?shards=, set by the test


@app.task
def double(x: int) -> int:
    return 2 * x
"""
JOBS = 120


def test_one_queue_spreads_over_every_shard_and_master_and_a_worker_drains_it(
    tmp_path: Path, redis_cluster: RedisClusterServers
) -> None:
    prefix = unique_prefix()
    url = f"{redis_cluster.url}?prefix={prefix}&shards=6"
    project = Project(tmp_path, url)
    (tmp_path / "sharded_app.py").write_text(TASKS)
    producer = Conveyor(url)
    try:
        double = producer.task(name="sharded_app:double")(lambda x: x)
        jobs = [double.delay(i) for i in range(JOBS)]  # a call each: placed one by one
        broker = producer.broker
        assert {broker.shard_of(j.id) for j in jobs} == set(range(6))
        home = redis_cluster.master_of(prefix).client()
        tags = json.loads(home.get(f"{{{prefix}}}:shards"))["tags"]
        # Each shard's master holds its jobs; the six shards fall on the three masters.
        for job in jobs:
            tag = tags[broker.shard_of(job.id)]
            assert redis_cluster.master_of(tag).client().exists(f"{{{tag}}}:job:{job.id}")
        assert len({redis_cluster.master_of(t).port for t in tags}) == 3
        queued = json.loads(conveyor(project, "queues", "--json").stdout)["queues"]
        assert [(q["queue"], q["queued"]) for q in queued] == [("default", JOBS)]

        worker = project.worker(module="sharded_app")
        assert [j.result(timeout=60) for j in jobs] == [2 * i for i in range(JOBS)]
        ended = json.loads(conveyor(project, "queues", "--json").stdout)["queues"]
        assert [(q["queue"], q["succeeded"], q["queued"]) for q in ended] == [("default", JOBS, 0)]
        listed = conveyor(project, "jobs", "succeeded", "--limit", str(JOBS + 10), "--json")
        assert sorted(j["id"] for j in json.loads(listed.stdout)["jobs"]) == sorted(
            j.id for j in jobs
        )
        shown = json.loads(conveyor(project, "job", jobs[7].id, "--json").stdout)
        assert (shown["status"], shown["result"]) == ("succeeded", 14)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    finally:
        producer.close()
        project.cleanup()


def test_workflows_and_dependencies_on_a_sharded_prefix(redis_server: RedisServer) -> None:
    app = Conveyor(f"{redis_server.url}?shards=3", prefix=unique_prefix())

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def total(values: list[int], bonus: int = 0) -> int:
        return sum(values) + bonus

    @app.periodic(every=60)
    def beat() -> str:
        return "tick"

    try:
        flow = chain(add.s(1, 2), add.s(10)).delay()
        fan = chord([add.s(i, 1) for i in range(9)], total.s(bonus=100)).delay()
        first = add.delay(1, 1)
        after = add.options(depends_on=[first.id]).delay(5, 5)
        assert app.broker.shard_of(after.id) == app.broker.shard_of(first.id)
        other = next(
            j for j in (add.delay(0, i) for i in range(50))
            if app.broker.shard_of(j.id) != app.broker.shard_of(first.id)
        )  # fmt: skip
        with pytest.raises(ValidationError, match="enqueue_many"):
            add.options(depends_on=[first.id, other.id]).delay(0, 0)
        # A periodic job (unique by default: on its key's shard, the same id in every
        # scheduler) fires once per tick.
        sched = Scheduler(app)
        assert sched.tick() == []
        (fired,) = sched.tick(time.time() + 61)
        assert sched.tick(time.time() + 61) == []
        drain(app)
        assert fired.result(timeout=0) == "tick"
        assert flow.result(timeout=0) == 13
        assert fan.result(timeout=0) == sum(range(1, 10)) + 100
        assert after.result(timeout=0) == 10
    finally:
        app.close()


def test_the_number_of_shards_is_fixed_when_the_prefix_is_first_used(
    redis_server: RedisServer,
) -> None:
    prefix = unique_prefix()
    sharded = Conveyor(f"{redis_server.url}?shards=3", prefix=prefix)
    job = sharded.task(name="t")(lambda: None).delay()
    with Conveyor(redis_server.url, prefix=prefix) as plain:
        with pytest.raises(ConfigurationError, match=r"add \?shards=3 to the broker URL"):
            plain.task(name="t")(lambda: None).delay()
        with pytest.raises(ConfigurationError, match="sharded over 3 shards"):
            plain.broker.stats()
    for call in (  # each read of jobs or events a first call: refused, not answered empty
        lambda b: b.get([job.id]),
        lambda b: b.read_events(None, 0, 10),
        lambda b: b.events_tail(),
        lambda b: b.wait(job.id, 0),
        lambda b: asyncio.run(b.wait_async(job.id, 0)),
        lambda b: b.pause("default"),  # paused nothing, and said so
        lambda b: b.purge("default"),  # purged nothing: "purged 0 job(s)"
    ):
        with (
            open_broker(redis_server.url, prefix=prefix) as plain_broker,
            pytest.raises(ConfigurationError, match=r"add \?shards=3 to the broker URL"),
        ):
            call(plain_broker)
    with (
        Conveyor(f"{redis_server.url}?shards=4", prefix=prefix) as other,
        pytest.raises(ConfigurationError, match=r"open it with \?shards=3"),
    ):
        other.broker.get([job.id])
    sharded.close()

    looking = unique_prefix()  # a tool that only looks (create=False) writes no layout
    with open_broker(f"{redis_server.url}?shards=2", prefix=looking, create=False) as b:
        assert b.stats() == [] and b.read_events(None, 0, 10) == []
    assert not redis_server.client().exists(f"{{{looking}}}:shards")

    unsharded = unique_prefix()
    with Conveyor(redis_server.url, prefix=unsharded) as plain:
        plain.task(name="t")(lambda: None).delay()
    with (
        Conveyor(f"{redis_server.url}?shards=2", prefix=unsharded) as late,
        pytest.raises(ConfigurationError, match="holds the jobs of an unsharded queue"),
    ):
        late.broker.stats()


def test_a_worker_on_a_plain_url_stops_on_a_sharded_prefix(redis_server: RedisServer) -> None:
    # It took the refusal for an adapter bug: a traceback every few seconds, for ever,
    # running nothing.
    from conveyor.worker import Worker

    prefix = unique_prefix()
    sharded = Conveyor(f"{redis_server.url}?shards=3", prefix=prefix)
    job = sharded.task(name="t")(lambda: None).delay()
    with Conveyor(redis_server.url, prefix=prefix) as plain:
        worker = Worker(plain)
        with pytest.raises(ConfigurationError, match=r"add \?shards=3 to the broker URL"):
            worker.run()  # off the main thread's signal handling: pytest's thread is main
    assert job.status is JobStatus.QUEUED
    sharded.close()


def test_a_sleeping_fetch_blocks_once_per_shard_and_keeps_its_reads(
    redis_server: RedisServer,
) -> None:
    """One server has one blocked read per fetching consumer (over every shard's
    streams), kept across fetches: ten short fetches in a row leave one read on the
    server, not ten; a job on any shard wakes the fetch."""
    broker = open_broker(f"{redis_server.url}?shards=3", prefix=unique_prefix())

    def reads() -> int:  # other tests' reads in flight may end meanwhile: at most these
        return sum(c["cmd"] == "xread" for c in redis_server.client().client_list())

    try:
        others = reads()
        for _ in range(10):
            assert broker.fetch(["default"], "c1", 1, 30.0, 0.2) == []
        assert 1 <= reads() <= 1 + others
        assert woken_after(broker, mint(2), 0.3, 5.0) < 2.0
    finally:
        broker.close()


def woken_after(broker: Broker, job_id: str, delay: float, block: float) -> float:
    """Seconds a fetch of ``c1`` blocking ``block`` s took to hand out the job enqueued
    ``delay`` s after it began."""
    env = Envelope(job_id, "default", b"p")
    waiter = threading.Timer(delay, lambda: broker.enqueue([env]))
    waiter.start()
    started = time.monotonic()
    try:
        assert [d.id for d in broker.fetch(["default"], "c1", 1, 30.0, block)] == [env.id]
        return time.monotonic() - started
    finally:
        waiter.join()


def test_a_failing_shard_does_not_strand_what_a_fetch_claimed_on_the_others(
    redis_server: RedisServer,
) -> None:
    """Shard 2 answers every fetch with an error (its paused set is of the wrong type, as
    a shard whose master fails over answers with one): the jobs of shards 0 and 1 are
    handed out whichever shard a look starts from, and a fetch that finds nothing raises."""
    prefix = unique_prefix()
    broker = open_broker(f"{redis_server.url}?shards=3", prefix=prefix)
    try:
        assert broker.stats() == []  # the layout written
        redis_server.client().set(f"{{{prefix}~2}}:paused", "not a set")
        for _ in range(4):  # every shard first in turn
            envs = [Envelope(mint(0), "default", b"p"), Envelope(mint(1), "default", b"p")]
            broker.enqueue(envs)
            got = broker.fetch(["default"], "c1", 10, 30.0, 0)
            assert sorted(d.id for d in got) == sorted(e.id for e in envs)
        with pytest.raises(ConveyorError, match="WRONGTYPE"):
            broker.fetch(["default"], "c1", 10, 30.0, 0)
    finally:
        broker.close()


def test_commands_that_only_look_leave_a_fresh_sharded_prefix_unfixed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``conveyor queues`` (and the other commands that look) on a prefix no producer has
    used write no layout: the first producer's ``?shards=`` fixes it, not a look's."""
    prefix = unique_prefix()
    project = Project(tmp_path, f"{redis_server.url}?prefix={prefix}&shards=4")
    try:
        assert json.loads(conveyor(project, "queues", "--json").stdout)["queues"] == []
        conveyor(project, "info")
        conveyor(project, "jobs", "queued")
        assert not redis_server.client().exists(f"{{{prefix}}}:shards")
        with Conveyor(f"{redis_server.url}?prefix={prefix}&shards=8") as producer:
            job = producer.task(name="t")(lambda: None).delay()
            assert producer.broker.shard_of(job.id) < 8
    finally:
        project.cleanup()


def test_sleeping_fetches_on_one_server_hold_a_connection_each_whatever_the_shards(
    redis_server: RedisServer,
) -> None:
    """On one server a sleeping fetch reads every shard's streams in one ``XREAD``: two
    fetches over 200 shards hold two connections of the pool (128), and an enqueue from
    another thread meanwhile goes through."""
    broker = open_broker(f"{redis_server.url}?shards=200", prefix=unique_prefix())

    def reads() -> int:
        return sum(c["cmd"] == "xread" for c in redis_server.client().client_list())

    try:
        others = reads()
        fetches = [
            threading.Thread(target=broker.fetch, args=(["other"], f"c{i}", 1, 30.0, 1.5))
            for i in range(2)
        ]
        for t in fetches:
            t.start()
        time.sleep(0.7)
        assert reads() <= 2 + others
        env = Envelope(mint(5), "default", b"p")
        assert broker.enqueue([env]) == [env.id]
        for t in fetches:
            t.join()
        assert [d.id for d in broker.fetch(["default"], "c0", 1, 30.0, 0)] == [env.id]
    finally:
        broker.close()


def test_a_sharded_prefix_on_a_server_that_is_down_raises_conveyors_error() -> None:
    """The first call reads the layout: a server that does not answer is reported as
    ``BrokerUnavailable``, from ``read_events`` as from the others."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open_broker(f"redis://127.0.0.1:{port}/?shards=2", prefix=unique_prefix()) as b:
        with pytest.raises(BrokerUnavailable):
            b.read_events(None, 0, 10)
        with pytest.raises(BrokerUnavailable):
            b.events_tail()


def test_a_fetch_may_block_without_end(redis_server: RedisServer) -> None:
    """``block=math.inf``: the fetch sleeps until a job comes, as on a plain broker."""
    broker = open_broker(f"{redis_server.url}?shards=3", prefix=unique_prefix())
    try:
        woken_after(broker, mint(1), 0.5, math.inf)
    finally:
        broker.close()


def test_a_closed_sharded_broker_opens_again_at_its_next_call(redis_server: RedisServer) -> None:
    """As a plain Redis broker: after ``close``, a call connects again, a blocking read of
    the events too."""
    broker = open_broker(f"{redis_server.url}?shards=2", prefix=unique_prefix())
    try:
        assert broker.read_events(None, 0.1, 10) == []
        broker.close()
        assert broker.read_events(None, 0.1, 10) == []
        assert broker.fetch(["default"], "c1", 1, 30.0, 0.1) == []
    finally:
        broker.close()


def test_a_sleeping_fetch_reads_in_slices_clear_of_the_socket_timeout(
    redis_server: RedisServer,
) -> None:
    """With ``?socket_timeout=1`` a sleeping fetch's blocked read never outlasts the
    socket: three seconds of sleep open no connection again."""
    url = f"{redis_server.url}?shards=2&socket_timeout=1"
    broker = open_broker(url, prefix=unique_prefix())

    def connections() -> int:
        return int(redis_server.client().info("stats")["total_connections_received"])

    try:
        assert broker.fetch(["default"], "c1", 1, 30.0, 0.3) == []  # its connections made
        before = connections()
        assert broker.fetch(["default"], "c1", 1, 30.0, 3.0) == []
        assert connections() - before <= 1  # this count's own client
    finally:
        broker.close()


def test_a_blocker_that_ends_idle_as_a_fetch_arms_it_is_started_again(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocking-read thread ends after ``_BLOCKER_IDLE`` without orders; with none (0 s)
    every thread ends between the fetch finding it alive and arming it, the race a
    minute's idle leaves open: armed, it is started again, and a job wakes the fetch."""
    monkeypatch.setattr(_shardfetch, "_BLOCKER_IDLE", 0.0)
    broker = open_broker(f"{redis_server.url}?shards=3", prefix=unique_prefix())
    try:
        for i in range(4):
            assert woken_after(broker, mint(i % 3), 0.2, 3.0) < 1.5
    finally:
        broker.close()


def test_the_layout_is_acknowledged_as_an_enqueue_is_with_wait(redis_server: RedisServer) -> None:
    """``?wait=1``: the layout, written at first use, waits for a replica as an enqueue
    does; a server without one refuses to acknowledge it."""
    url = f"{redis_server.url}?shards=2&wait=1&wait_timeout=0.1"
    with (
        open_broker(url, prefix=unique_prefix()) as broker,
        pytest.raises(BrokerUnavailable, match=r"\(\?wait=1\) had the layout of the sharded"),
    ):
        broker.stats()


def test_a_broker_that_only_looks_follows_the_layout_a_producer_writes_later(
    redis_server: RedisServer,
) -> None:
    """Opened with ``create=False`` on a fresh prefix, a broker writes no layout while it
    looks, sees the one a producer writes later (another S: refused), and writes it
    itself before a pause (shard state needs it)."""
    prefix, url = unique_prefix(), f"{redis_server.url}?shards=2"
    with open_broker(url, prefix=prefix, create=False) as looking:
        assert looking.stats() == []
        with open_broker(f"{redis_server.url}?shards=3", prefix=prefix) as producer:
            producer.enqueue([Envelope(mint(0), "default", b"p")])
        with pytest.raises(ConfigurationError, match=r"open it with \?shards=3"):
            looking.stats()
    fresh = unique_prefix()
    with open_broker(url, prefix=fresh, create=False) as looking:
        assert looking.stats() == []
        looking.pause("default")
    assert redis_server.client().exists(f"{{{fresh}}}:shards")
    with open_broker(url, prefix=fresh) as worker:
        assert worker.fetch(["default"], "c1", 1, 30.0, 0) == []
        assert [(s.queue, s.paused) for s in worker.stats()] == [("default", True)]
