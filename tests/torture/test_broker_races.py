"""Races and crashes at the broker level, on every broker where they apply.

* Eight reclaimers race on the same expired leases: each job is handed to exactly one
  (eight processes on an embedded broker they share: one SQLite file; threads, each with
  its own broker object, on the others).
* A delayed job whose delay exceeds the lease runs once (fake clock on every broker; Redis
  also on the server's clock).
* ``kill -9`` Redis under load after N acknowledged enqueues, restart from the AOF: with
  ``appendfsync always`` lost = 0; with ``everysec`` the loss is measured and printed.
* Job streams are never trimmed: acked entries are deleted one by one, and nothing pending
  leaves a stream before its job does; a full event log trims itself only.
"""

from __future__ import annotations

import ast
import multiprocessing
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from brokers import Target, TestBroker, params
from conveyor._clock import Clock, FakeClock
from conveyor._errors import BrokerError, BrokerUnavailable
from conveyor._message import Delivery, Envelope, JobStatus
from conveyor.brokers._port import EVENTS_SLACK, Broker, Finish, LeaseState
from conveyor.brokers.redis import RedisBroker, _scripts
from conveyor.testing.checker import Report, check
from conveyor.testing.conformance import envelope
from redis_server import RedisServer, private_redis, unique_prefix

from .conftest import pending_count, stream_entries

QUEUE = "default"
RECLAIMERS = 8


# -- backends: open several broker objects over the same data ---------------------------------


@dataclass
class Backend:
    """Broker objects over the same data: each of the test's broker (``tests/brokers.py``)
    on a server of the test's own; one object of a broker processes cannot share."""

    broker_spec: TestBroker
    target: Target
    opened: list[Broker] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.broker_spec.name

    def broker(self, clock: Clock | None = None) -> Broker:
        """A new broker object on the same data (the one object, where it cannot be)."""
        if self.opened and not self.broker_spec.shared:
            return self.opened[0]
        b = self.target.open(clock)
        self.opened.append(b)
        return b


@pytest.fixture(params=params())
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    spec: TestBroker = request.param
    b = Backend(spec, spec.target(request, tmp_path, "fresh"))
    try:
        yield b
    finally:
        for broker in b.opened:
            broker.close()


def _finish_all(broker: Broker, got: list[Delivery]) -> list[str]:
    done = broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in got])
    return [d.id for d, ok in zip(got, done, strict=True) if ok]


# -- eight reclaimers ------------------------------------------------------------------------

Claimed = list[tuple[str, str, int]]  # (job id, token, deliveries)


def _reclaim_loop(broker: Broker, name: str, barrier: Any) -> Claimed:
    barrier.wait(30)
    claimed: Claimed = []
    empty = 0
    while empty < 3:  # a few empty looks in a row: the others took the rest
        got = broker.fetch([QUEUE], name, 3, 60.0, 0.0)
        claimed += [(d.id, d.token, d.deliveries) for d in got]
        empty = 0 if got else empty + 1
    return claimed


def _reclaimer_process(target: Target, name: str, barrier: Any, out: Any) -> None:
    """One reclaimer in a process of its own, on its own connection."""
    broker = target.open()
    try:
        out.put((name, _reclaim_loop(broker, name, barrier)))
    except BaseException as exc:
        out.put((name, repr(exc)))
        raise
    finally:
        broker.close()


def _race_reclaimers(backend: Backend) -> dict[str, Claimed]:
    results: dict[str, Any] = {}
    names = [f"reclaimer-{i}" for i in range(RECLAIMERS)]
    spec = backend.broker_spec
    if spec.embedded and spec.shared:  # processes, each with its own connection (SQLite)
        ctx = multiprocessing.get_context("spawn")
        barrier, out = ctx.Barrier(RECLAIMERS), ctx.Queue()
        procs = [
            ctx.Process(target=_reclaimer_process, args=(backend.target, n, barrier, out))
            for n in names
        ]
        for p in procs:
            p.start()
        for _ in procs:
            name, claimed = out.get(timeout=60)
            results[name] = claimed
        for p in procs:
            p.join(10)
            assert p.exitcode == 0, f"reclaimer process exited {p.exitcode}"
    else:  # threads, each with its own broker object (a server's: its own connections)
        tbarrier = threading.Barrier(RECLAIMERS)
        brokers = {n: backend.broker() for n in names}

        def run(n: str) -> None:
            results[n] = _reclaim_loop(brokers[n], n, tbarrier)

        threads = [threading.Thread(target=run, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for name, claimed in results.items():
        assert isinstance(claimed, list), f"{name} failed: {claimed}"
    return results


@pytest.mark.timeout(90)
def test_eight_reclaimers_racing_on_expired_leases_each_get_distinct_jobs(
    backend: Backend,
) -> None:
    broker = backend.broker()
    n, lease = 60, 0.3
    envs = [envelope(QUEUE) for _ in range(n)]
    broker.enqueue(envs)
    doomed = broker.fetch([QUEUE], "doomed", n, lease, 0.0)  # then the consumer dies
    assert len(doomed) == n
    time.sleep(lease + 0.3)

    results = _race_reclaimers(backend)
    claimed = [c for cs in results.values() for c in cs]
    spread = sorted((len(cs) for cs in results.values()), reverse=True)
    print(f"{backend.name}: {n} expired leases, reclaimed per reclaimer {spread}")
    ids = [job_id for job_id, _, _ in claimed]
    assert sorted(ids) == sorted(e.id for e in envs), "a job was handed out twice, or not at all"
    assert {deliveries for _, _, deliveries in claimed} == {2}

    by_id = {d.id: d for d in doomed}
    again = [Delivery(i, QUEUE, by_id[i].payload, token, k) for i, token, k in claimed]
    assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"late") for d in doomed]) == [False] * n
    completed = _finish_all(broker, again)
    report = check(
        acknowledged=[e.id for e in envs],
        executed=[d.id for d in doomed] + ids,
        completed=completed,
    )
    report.assert_ok(max_duplicates=n)  # each expired lease may run once more, no more
    assert report.duplicate_runs == n


# -- a delay longer than the lease -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_delayed_job_whose_delay_exceeds_the_lease_runs_once(backend: Backend) -> None:
    """Two consumers poll every second for 80 s; the job is due at 35 s under a 10 s lease.
    The one that gets it renews it every second for 20 s, then finishes."""
    clock = FakeClock()
    broker = backend.broker(clock)
    lease, delay = 10.0, 35.0
    env = Envelope("delayed", QUEUE, b"later", eta=clock.time() + delay)
    broker.enqueue([env])
    deliveries: list[tuple[float, str, Delivery]] = []
    completed: list[str] = []
    held: Delivery | None = None
    for tick in range(1, 81):
        clock.advance(1)
        for consumer in ("a", "b"):
            got = broker.fetch([QUEUE], consumer, 1, lease, 0.0)
            deliveries += [(float(tick), consumer, d) for d in got]
            held = got[0] if got else held
        if held is not None:
            if tick >= delay + 20:
                completed += _finish_all(broker, [held])
                held = None
            else:
                assert broker.renew([held], lease) == [LeaseState.OK]
    assert [(t, d.id) for t, _, d in deliveries] == [(delay, "delayed")]
    record = broker.get([env.id])[0]
    assert record is not None and record.status is JobStatus.SUCCEEDED
    check(
        acknowledged=[env.id], executed=[d.id for _, _, d in deliveries], completed=completed
    ).assert_ok()


@pytest.mark.redis
@pytest.mark.timeout(30)
def test_a_delayed_job_longer_than_the_lease_runs_once_on_the_redis_servers_clock(
    fresh_redis_server: RedisServer,
) -> None:
    """The real clock: etas and leases follow the server's TIME. Due after 1 s under a 0.3 s
    lease; two consumers block-fetch for 2.5 s; the holder renews every 0.1 s."""
    prefix = unique_prefix()
    lease = 0.3
    producer = RedisBroker(fresh_redis_server.url, prefix=prefix)
    env = Envelope("delayed", QUEUE, b"later", eta=time.time() + 1.0)
    producer.enqueue([env])
    seen: list[tuple[str, Delivery]] = []
    completed: list[str] = []
    renewals: list[LeaseState] = []
    stop = time.monotonic() + 2.5

    def consume(name: str) -> None:
        broker = RedisBroker(fresh_redis_server.url, prefix=prefix)
        try:
            while time.monotonic() < stop:
                for d in broker.fetch([QUEUE], name, 1, lease, 0.2):
                    seen.append((name, d))
                    until = time.monotonic() + 1.0  # runs 1 s, over three leases
                    while time.monotonic() < until:
                        time.sleep(0.1)
                        renewals.extend(broker.renew([d], lease))
                    completed.extend(_finish_all(broker, [d]))
        finally:
            broker.close()

    threads = [threading.Thread(target=consume, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    producer.close()
    assert [d.id for _, d in seen] == ["delayed"], seen
    assert renewals and set(renewals) == {LeaseState.OK}
    check(acknowledged=[env.id], executed=[d.id for _, d in seen], completed=completed).assert_ok()


# -- kill -9 Redis under load ----------------------------------------------------------------


@dataclass
class Load:
    """Bookkeeping of one producer and one consumer running against a Redis being killed."""

    acknowledged: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # finish returned True
    unsure: int = 0  # deliveries whose finish raised or was refused
    errors: int = 0
    stop_producing: threading.Event = field(default_factory=threading.Event)
    stop_consuming: threading.Event = field(default_factory=threading.Event)


def _produce(broker: Broker, load: Load, total: int) -> None:
    while len(load.acknowledged) < total and not load.stop_producing.is_set():
        env = envelope(QUEUE)
        try:
            broker.enqueue([env])
        except BrokerUnavailable:
            load.unknown.append(env.id)
            load.errors += 1
            time.sleep(0.05)
            continue
        load.acknowledged.append(env.id)


def _consume(broker: Broker, load: Load, lease: float) -> None:
    while not load.stop_consuming.is_set():
        try:
            got = broker.fetch([QUEUE], "consumer", 20, lease, 0.1)
        except BrokerError:
            load.errors += 1
            time.sleep(0.05)
            continue
        load.executed += [d.id for d in got]
        try:
            ok = broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in got])
        except BrokerError:
            load.errors += 1
            load.unsure += len(got)
            continue
        load.accepted += [d.id for d, yes in zip(got, ok, strict=True) if yes]
        load.unsure += ok.count(False)


def _wait_drained(broker: Broker, load: Load, timeout: float) -> None:
    """Until every acknowledged job has ended (or ``timeout`` s: a lost one never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = broker.get(load.acknowledged)
        if all(r is not None and r.status.terminal for r in records):
            return
        time.sleep(0.2)


def _assert_recovers(producer: Broker, consumer: Broker) -> None:
    """The broker objects that saw the crash enqueue and deliver again."""
    after = envelope(QUEUE)
    producer.enqueue([after])
    for _ in range(50):
        got = consumer.fetch([QUEUE], "after", 50, 60.0, 0.2)
        if after.id in [d.id for d in got]:
            return
    raise AssertionError("a job enqueued after the restart was never delivered")


def _kill_under_load(server: RedisServer, *, kill_after: int, total: int) -> tuple[Report, Load]:
    """Produce and consume; kill -9 the server once ``kill_after`` enqueues were
    acknowledged, start it again from its AOF 1 s later (longer than the client's own
    retries), then drain and check."""
    prefix, lease = unique_prefix(), 1.0
    producer = RedisBroker(server.url, prefix=prefix)
    consumer = RedisBroker(server.url, prefix=prefix)
    load = Load()
    threads = [
        threading.Thread(target=_produce, args=(producer, load, total)),
        threading.Thread(target=_consume, args=(consumer, load, lease)),
    ]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(load.acknowledged) < kill_after and time.monotonic() < deadline:
            time.sleep(0.001)
        server.kill()
        acked_at_kill = len(load.acknowledged)
        time.sleep(1.0)
        server.start()
        threads[0].join(60)
        _wait_drained(producer, load, 20.0)
        load.stop_consuming.set()
        threads[1].join(30)
        ids = load.acknowledged + load.unknown
        completed = [
            i
            for i, r in zip(ids, producer.get(ids), strict=True)
            if r is not None and r.status.terminal
        ]
        report = check(
            acknowledged=load.acknowledged,
            unknown=load.unknown,
            executed=load.executed,
            completed=completed,
        )
        print(
            f"kill -9 after {acked_at_kill} acknowledged enqueues: {report}; "
            f"client errors {load.errors}, unsure finishes {load.unsure}"
        )
        # Fenced completion, whatever the faults: no job's outcome accepted twice.
        assert len(load.accepted) == len(set(load.accepted))
        _assert_recovers(producer, consumer)
        return report, load
    finally:
        load.stop_producing.set()
        load.stop_consuming.set()
        for t in threads:
            t.join(10)
        producer.close()
        consumer.close()


@pytest.mark.redis
@pytest.mark.timeout(90)
def test_kill_9_redis_with_aof_always_under_load_loses_nothing(tmp_path: Path) -> None:
    server = private_redis(tmp_path / "redis", appendfsync="always")
    try:
        report, load = _kill_under_load(server, kill_after=300, total=600)
    finally:
        server.stop()
    report.assert_ok(max_duplicates=load.unsure)
    assert not report.lost


@pytest.mark.redis
@pytest.mark.timeout(90)
def test_kill_9_redis_with_aof_everysec_under_load_measures_the_loss(tmp_path: Path) -> None:
    """``everysec`` fsyncs once a second, but Redis write()s the AOF before it replies: a
    killed *process* leaves acknowledged writes in the kernel's page cache, which the restart
    reads back. What everysec can lose (about a second) is lost to a machine crash or power
    cut, which a test on one running kernel cannot cause. So this measures and prints; it
    asserts only that the checker's books balance and the broker recovers."""
    server = private_redis(tmp_path / "redis", appendfsync="everysec")
    try:
        report, _ = _kill_under_load(server, kill_after=300, total=600)
    finally:
        server.stop()
    print(f"everysec, kill -9: lost {len(report.lost)} of {report.acknowledged} acknowledged")
    assert not report.unexpected
    assert report.acknowledged >= 300


# -- trimming --------------------------------------------------------------------------------


def test_the_redis_adapter_never_trims_its_job_streams() -> None:
    """A documented fact, pinned: no script or module of the adapter trims a job stream (no
    MAXLEN, MINID or XTRIM). An entry leaves its stream only through its own job: XACK +
    XDEL when the job finishes, is reclaimed or released (then a new entry is added at the
    tail). So trimming can never drop a pending entry. Whoever adds trimming must replace
    this test with one showing that a pending entry survives it. Two streams are trimmed,
    and no job is ever in either and no group reads them: the resume signal
    ``{P}:resumed`` (``RESUMED`` in resume.lua, ``SIGNAL`` in common.lua ``due_soon``) and
    the event log ``{P}:events`` (common.lua ``publish``, and
    enqueue_one.lua's copy of it for a lone job's event), whose trimming leaves every job
    stream alone (the test below)."""
    folder = Path(_scripts.__file__).parent
    code = [re.sub(r"--[^\n]*", "", _scripts.source(name)) for name in _scripts.NAMES]
    code += [_without_docstrings(p.read_text()) for p in folder.glob("*.py")]
    assert len(code) > len(_scripts.NAMES)
    trims = {
        line.strip()
        for text in code
        for line in text.splitlines()
        if re.search(r"\b(MAXLEN|MINID|XTRIM)\b", line, re.IGNORECASE)
    }
    assert trims == {
        "redis.call('XADD', RESUMED, 'MAXLEN', 1, '*', 'queue', ARGV[5])",
        "redis.call('XADD', SIGNAL, 'MAXLEN', 1, '*', 'queue', name)",
        "if keep then return pcall(redis.call, 'XADD', EVENTS, 'MINID', keep, n, 'e', body) end",
        "added = redis.pcall('XADD', events, 'MINID', math.max(n - ARGV[7] + 1, 0), n, 'e', "
        "ARGV[8])",
    }, trims


def _without_docstrings(source: str) -> str:
    """Python code with its docstrings and comments blanked (they may name MAXLEN)."""
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            doc = body[0].value
            if isinstance(doc, ast.Constant) and isinstance(doc.value, str):
                for i in range(doc.lineno - 1, doc.end_lineno or doc.lineno):
                    lines[i] = ""
    return "\n".join(re.sub(r"#[^\n]*", "", line) for line in lines)


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_full_event_log_leaves_every_queued_and_pending_job_in_its_stream(
    fresh_redis_server: RedisServer,
) -> None:
    """Events far past the cap, published by enqueue (a batch and lone jobs, which take
    enqueue_one.lua), finish and on their own, while jobs wait and run: the log holds
    about the cap, and the job streams every entry."""
    prefix = unique_prefix()
    broker = RedisBroker(fresh_redis_server.url, prefix=prefix, events_kept=20)
    try:
        envs = [envelope(QUEUE, priority=i % 3) for i in range(60)]
        broker.enqueue(envs, [b"enqueued %d" % i for i in range(60)])
        for i in range(40):  # past the cap again, one lone job at a time
            env = envelope(QUEUE, priority=i % 3)
            broker.enqueue([env], [b"lone %d" % i])
            envs.append(env)
        running = broker.fetch([QUEUE], "c", 25, 60.0, 0.0)
        done = [Finish(d, JobStatus.SUCCEEDED, b"r", event=b"ended") for d in running[:10]]
        assert broker.finish(done, [b"started"] * 25) == [True] * 10
        for _ in range(30):
            broker.publish([b"heartbeat"] * 10)
        left = {e.id for e in envs} - {d.id for d in running[:10]}
        assert sorted(stream_entries(fresh_redis_server, prefix)) == sorted(left)
        assert pending_count(fresh_redis_server, prefix) == 15
        kept = broker.read_events(None, 0.0, 1000)
        assert 20 <= len(kept) < 20 + EVENTS_SLACK
        assert [e for _, e in kept[-10:]] == [b"heartbeat"] * 10
        assert len(broker.fetch([QUEUE], "c", 100, 60.0, 0.0)) == 75  # the rest, all there
    finally:
        broker.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_streams_hold_exactly_the_pending_jobs_and_empty_once_all_finish(
    fresh_redis_server: RedisServer,
) -> None:
    """Through deliveries, releases, retries and expired leases, the streams hold one entry
    per job still queued or running (none dropped, none left behind), and none at the end."""
    prefix, clock, lease = unique_prefix(), FakeClock(), 10.0
    broker = RedisBroker(fresh_redis_server.url, prefix=prefix, clock=clock)
    try:
        envs = [envelope(QUEUE, priority=i % 3) for i in range(30)]
        broker.enqueue(envs)
        ids = [e.id for e in envs]

        def entries_match() -> None:
            live = {
                r.id
                for r in broker.get(ids)
                if r is not None and r.status in (JobStatus.QUEUED, JobStatus.RUNNING)
            }
            in_streams = stream_entries(fresh_redis_server, prefix)
            assert sorted(in_streams) == sorted(live)  # one entry per pending job
            running = sum(r is not None and r.status is JobStatus.RUNNING for r in broker.get(ids))
            assert pending_count(fresh_redis_server, prefix) == running

        entries_match()
        first = broker.fetch([QUEUE], "a", 12, lease, 0.0)
        entries_match()
        broker.release(first[:4])
        retry = [
            Finish(
                d,
                JobStatus.SCHEDULED,
                b"again",
                retry=Envelope(d.id, QUEUE, b"attempt 1", d.priority),
            )
            for d in first[4:8]
        ]
        assert broker.finish(retry) == [True] * 4
        entries_match()
        clock.advance(lease)  # first[8:] are abandoned: their leases run out
        second = broker.fetch([QUEUE], "b", 30, lease, 0.0)
        entries_match()
        assert len(second) == 30
        assert _finish_all(broker, second) == [d.id for d in second]
        assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"x") for d in first]) == [False] * 12
        entries_match()
        assert stream_entries(fresh_redis_server, prefix) == []
        assert pending_count(fresh_redis_server, prefix) == 0
    finally:
        broker.close()
