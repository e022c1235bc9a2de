"""Model-based test: a Hypothesis state machine drives each broker against a model of it.

Rules: enqueue (now or later, any priority), enqueue again with the same id (a producer's
retry), fetch, finish (succeeded, failed, dead, retry now or later; one at a time or a
consumer's whole batch), renew, release, crash (a consumer forgets its deliveries: they come
back after the lease), advance the ``FakeClock``, reclaim (past the lease, then fetch), and on
Redis restart the server with ``kill -9`` (AOF ``appendfsync always`` on a private server, so
nothing acknowledged may be lost).

The model says exactly what each call must return. After every step:

* every job whose enqueue returned is still there (lost = 0), with the status of the model
  in ``get()`` and in ``stats()``;

and on every fetch:

* nothing unknown is delivered (unexpected = 0), nor a finished job;
* a job is delivered only if it is due: queued, or scheduled past its eta, or running with
  its lease expired (so no job is held by two live deliveries; a delivery whose lease was
  taken over is refused by finish, renew and release);
* the count is exactly min(count, due jobs), with the current payload and delivery count.

At the end every job is drained and the checker runs: lost = 0, unexpected = 0, nothing
completed twice, and duplicate runs (deliveries of a job whose earlier delivery had not
finished) no more than the deliveries whose lease ran out unfinished (crashes and consumers
the clock outran): the only faults that may cause one.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conveyor._clock import FakeClock
from conveyor._message import Delivery, Envelope, JobStatus
from conveyor.brokers._port import Broker, Finish, LeaseState
from postgres_server import empty_schema, schema_url, unique_schema
from redis_server import RedisServer, private_redis, unique_prefix

from .checker import check

LEASE = 10.0
QUEUE = "default"
CONSUMERS = ("c1", "c2", "c3")
MAX_RESTARTS = 1  # per example: a restart costs ~50 ms, a step well under 1 ms
QUEUED, SCHEDULED, RUNNING = JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING
_END = {"succeeded": JobStatus.SUCCEEDED, "failed": JobStatus.FAILED, "dead": JobStatus.DEAD}
OUTCOMES = ("succeeded", "failed", "dead", "retry_now", "retry_later")


@dataclass
class ModelJob:
    envelope: Envelope  # the current one: a retry replaces it
    first: Envelope  # as first enqueued: what a producer's retry sends again
    status: JobStatus
    attempt: int = 0
    deliveries: int = 0
    token: str = ""  # of the current delivery while running
    lease_until: float = 0.0


@dataclass
class Held:
    consumer: str
    delivery: Delivery


Build = Callable[[FakeClock], tuple[Broker, Callable[[], None]]]


class BrokerModel(RuleBasedStateMachine):
    build: Build
    server: RedisServer | None = None

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.broker, self._cleanup = self.build(self.clock)
        self.jobs: dict[str, ModelJob] = {}
        self.held: dict[int, Held] = {}  # by a handle in fetch order (replayable draws)
        self.runs: dict[tuple[str, str], int] = {}  # (job id, token) -> attempt
        self.completed: list[str] = []
        # Deliveries (job id, token) whose lease ran out before they finished.
        self.faults: set[tuple[str, str]] = set()
        self.tokens: dict[str, set[str]] = {}  # job id -> every token it was handed out with
        self.restarts = 0
        self._ids = 0
        self._handles = 0

    # -- helpers --------------------------------------------------------------------------

    def _current(self, d: Delivery) -> bool:
        job = self.jobs[d.id]
        return job.status is RUNNING and job.token == d.token

    def _mark_expired(self) -> None:
        now = self.clock.time()
        for job in self.jobs.values():
            if job.status is RUNNING and job.lease_until <= now:
                self.faults.add((job.envelope.id, job.token))

    def _fetch(self, consumer: str, count: int) -> list[Delivery]:
        now = self.clock.time()
        # What the broker must do first: due scheduled jobs and expired leases come back.
        for job in self.jobs.values():
            if job.status is SCHEDULED and job.envelope.eta is not None and job.envelope.eta <= now:
                job.status = QUEUED
            elif job.status is RUNNING and job.lease_until <= now:
                job.status, job.token = QUEUED, ""
                event("lease expired: job reclaimed")
        due = [i for i, j in self.jobs.items() if j.status is QUEUED]
        got = self.broker.fetch([QUEUE], consumer, count, LEASE, 0.0)
        assert len(got) == min(count, len(due)), (
            f"fetch({count}) returned {len(got)} with {len(due)} due: {due}"
        )
        for d in got:
            assert d.id in self.jobs, f"unexpected: delivered {d.id!r}, never enqueued"
            job = self.jobs[d.id]
            assert not job.status.terminal, f"{d.id} delivered again after it ended"
            assert job.status is QUEUED, (
                f"{d.id} delivered while {job.status} (lease until {job.lease_until}, "
                f"now {now}): two live deliveries"
            )
            assert d.payload == job.envelope.payload
            assert d.deliveries == job.deliveries + 1
            # Fresh for this job; the port lets one token serve a whole fetched batch.
            seen = self.tokens.setdefault(d.id, set())
            assert d.token and d.token not in seen, f"{d.id} got token {d.token} again"
            seen.add(d.token)
            job.status, job.token = RUNNING, d.token
            job.lease_until, job.deliveries = now + LEASE, job.deliveries + 1
            self._handles += 1
            self.held[self._handles] = Held(consumer, d)
            self.runs[d.id, d.token] = job.attempt
        return got

    def _outcome(self, d: Delivery, outcome: str) -> Finish:
        if outcome in _END:
            return Finish(d, _END[outcome], result=b"r", reason="model")
        job = self.jobs[d.id]
        eta = None if outcome == "retry_now" else self.clock.time() + 2 * LEASE
        env = job.envelope
        retry = Envelope(
            env.id, env.queue, f"{env.id} attempt {job.attempt + 1}".encode(), env.priority, eta
        )
        return Finish(d, SCHEDULED, result=b"failed once", retry=retry)

    def _apply_finish(self, f: Finish) -> bool:
        """The model's side of one finish; returns what the broker must answer."""
        d = f.delivery
        if not self._current(d):
            event("finish of a stale delivery (refused)")
            return False
        job = self.jobs[d.id]
        job.token = ""
        if f.retry is None:
            job.status = f.status
            self.completed.append(d.id)
        else:
            job.envelope, job.attempt, job.deliveries = f.retry, job.attempt + 1, 0
            eta = f.retry.eta
            job.status = SCHEDULED if eta is not None and eta > self.clock.time() else QUEUED
        return True

    def _handle(self, data: st.DataObject, consumer: str | None = None) -> int:
        handles = sorted(
            h for h, x in self.held.items() if consumer is None or x.consumer == consumer
        )
        return data.draw(st.sampled_from(handles))

    # -- rules ----------------------------------------------------------------------------

    @rule(
        n=st.integers(1, 3),
        priority=st.integers(0, 2),
        delay=st.sampled_from([0.0, 0.0, 5.0, 2 * LEASE]),
    )
    def enqueue(self, n: int, priority: int, delay: float) -> None:
        now = self.clock.time()
        envs = []
        for _ in range(n):
            self._ids += 1
            job_id = f"j{self._ids}"
            envs.append(
                Envelope(
                    job_id,
                    QUEUE,
                    f"{job_id} attempt 0".encode(),
                    priority,
                    now + delay if delay else None,
                )
            )
        assert self.broker.enqueue(envs) == [e.id for e in envs]
        for e in envs:
            self.jobs[e.id] = ModelJob(e, e, SCHEDULED if delay else QUEUED)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def enqueue_again(self, data: st.DataObject) -> None:
        """A producer that timed out sends the same job again: nothing changes."""
        job = self.jobs[data.draw(st.sampled_from(sorted(self.jobs)))]
        assert self.broker.enqueue([job.first]) == [job.first.id]

    @rule(consumer=st.sampled_from(CONSUMERS), count=st.integers(1, 4))
    def fetch(self, consumer: str, count: int) -> None:
        self._fetch(consumer, count)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        held = self.held.pop(self._handle(data))
        f = self._outcome(held.delivery, outcome)
        expected = self._apply_finish(f)
        assert self.broker.finish([f]) == [expected], (
            f"finish of {held.delivery.id} ({'current' if expected else 'stale'} token)"
        )

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def finish_batch(self, data: st.DataObject) -> None:
        """One consumer finishes everything it holds in one call."""
        consumer = self.held[self._handle(data)].consumer
        handles = sorted(h for h, x in self.held.items() if x.consumer == consumer)
        outcomes = [data.draw(st.sampled_from(OUTCOMES)) for _ in handles]
        finishes = [
            self._outcome(self.held.pop(h).delivery, o)
            for h, o in zip(handles, outcomes, strict=True)
        ]
        expected = [self._apply_finish(f) for f in finishes]
        assert self.broker.finish(finishes) == expected

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        consumer = self.held[self._handle(data)].consumer
        mine = [x.delivery for h, x in sorted(self.held.items()) if x.consumer == consumer]
        expected = [LeaseState.OK if self._current(d) else LeaseState.LOST for d in mine]
        assert self.broker.renew(mine, LEASE) == expected
        for d in mine:
            if self._current(d):
                self.jobs[d.id].lease_until = self.clock.time() + LEASE
                self.faults.discard((d.id, d.token))  # renewed in time after all

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        d = self.held.pop(self._handle(data)).delivery
        expected = self._current(d)
        if expected:
            job = self.jobs[d.id]
            job.status, job.token = QUEUED, ""
            job.deliveries = max(job.deliveries - 1, 0)
            del self.runs[d.id, d.token]  # handed back unrun: not a run
        assert self.broker.release([d]) == [expected]

    @precondition(lambda self: self.held)
    @rule(consumer=st.sampled_from(CONSUMERS))
    def crash(self, consumer: str) -> None:
        """The consumer dies: its deliveries are forgotten, their leases run out."""
        for h in [h for h, x in self.held.items() if x.consumer == consumer]:
            d = self.held.pop(h).delivery
            if self._current(d):
                self.faults.add((d.id, d.token))

    @rule(seconds=st.sampled_from([0.5, 1.0, LEASE / 2, LEASE - 0.5, LEASE, LEASE + 1, 3 * LEASE]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._mark_expired()

    @rule(
        consumer=st.sampled_from(CONSUMERS),
        seconds=st.sampled_from([LEASE - 0.5, LEASE, LEASE + 1]),
    )
    def reclaim(self, consumer: str, seconds: float) -> None:
        """About one lease later a consumer fetches: leases that ran out (not one a tick
        early) come back to it."""
        self.clock.advance(seconds)
        self._mark_expired()
        self._fetch(consumer, 4)

    @precondition(lambda self: self.server is not None and self.restarts < MAX_RESTARTS)
    @rule()
    def restart_redis(self) -> None:
        """kill -9, then start from the AOF (fsynced before every reply)."""
        assert self.server is not None
        self.server.restart()
        self.restarts += 1
        event("redis restarted")

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def records_agree(self) -> None:
        ids = sorted(self.jobs)
        for job_id, record in zip(ids, self.broker.get(ids), strict=True):
            assert record is not None, f"lost: {job_id} is gone from the broker"
            assert record.status == self.jobs[job_id].status, (
                f"{job_id}: broker says {record.status}, model {self.jobs[job_id].status}"
            )

    @invariant()
    def stats_agree(self) -> None:
        fields = ("queued", "scheduled", "running", "succeeded", "failed", "dead")
        want = {f: sum(j.status.value == f for j in self.jobs.values()) for f in fields}
        got = dict.fromkeys(fields, 0)
        for st_ in self.broker.stats():
            if st_.queue == QUEUE:
                got = {f: getattr(st_, f) for f in fields}
        assert got == want

    # -- the end --------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:  # a step failed: keep its error, skip the drain
                self._drain_and_check()
        finally:
            self._cleanup()

    def _drain_and_check(self) -> None:
        self.clock.advance(10 * LEASE)  # past every lease and every eta
        self._mark_expired()
        for _ in range(1000):
            got = self._fetch("drainer", 50)
            if not got:
                break
            finishes = [Finish(d, JobStatus.SUCCEEDED, result=b"r") for d in got]
            for h in [h for h, x in self.held.items() if x.consumer == "drainer"]:
                del self.held[h]
            expected = [self._apply_finish(f) for f in finishes]
            assert self.broker.finish(finishes) == expected
        report = check(
            acknowledged=self.jobs,
            executed=[(i, attempt) for (i, _), attempt in self.runs.items()],
            completed=self.completed,
        )
        report.assert_ok(max_duplicates=len(self.faults))
        assert all(j.status.terminal for j in self.jobs.values())


# -- one machine per broker ------------------------------------------------------------------


def _memory(clock: FakeClock) -> tuple[Broker, Callable[[], None]]:
    from conveyor.brokers.memory import MemoryBroker

    broker = MemoryBroker(clock=clock)
    return broker, broker.close


def _sqlite_builder(root: Path) -> Build:
    from conveyor.brokers.sqlite import SQLiteBroker

    def build(clock: FakeClock) -> tuple[Broker, Callable[[], None]]:
        folder = tempfile.mkdtemp(dir=root)
        broker = SQLiteBroker(str(Path(folder) / "jobs.db"), clock=clock)

        def cleanup() -> None:
            broker.close()
            shutil.rmtree(folder, ignore_errors=True)

        return broker, cleanup

    return build


def _redis_builder(server: RedisServer) -> Build:
    from conveyor.brokers.redis import RedisBroker

    def build(clock: FakeClock) -> tuple[Broker, Callable[[], None]]:
        broker = RedisBroker(server.url, prefix=unique_prefix(), clock=clock)
        return broker, broker.close

    return build


def _postgres_builder(url: str) -> Build:
    """Every example on one schema, emptied after it (a migration per example costs more
    than the example)."""
    from conveyor.brokers.postgres import PostgresBroker

    schema = unique_schema()
    target = schema_url(url, schema)

    def build(clock: FakeClock) -> tuple[Broker, Callable[[], None]]:
        broker = PostgresBroker(target, clock=clock)

        def cleanup() -> None:
            broker.close()
            empty_schema(url, schema)

        return broker, cleanup

    return build


@pytest.fixture(scope="module")
def model_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = private_redis(tmp_path_factory.mktemp("model-redis"), appendfsync="always")
    try:
        yield server
    finally:
        server.stop()


EXAMPLES = {"memory": 100, "sqlite": 100, "redis": 100, "postgres": 100}


def _run(name: str, build: Build, server: RedisServer | None = None) -> None:
    machine = type(
        f"{name.title()}Model", (BrokerModel,), {"build": staticmethod(build), "server": server}
    )
    started = time.monotonic()
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES[name],
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        ),
    )
    print(f"model {name}: {EXAMPLES[name]} examples in {time.monotonic() - started:.1f} s")


# Green, the three run in ~15 s (PostgreSQL in ~13 s more); the timeouts leave the
# shrinker room to report a failure.
@pytest.mark.timeout(150)
def test_model_memory() -> None:
    _run("memory", _memory)


@pytest.mark.timeout(150)
def test_model_sqlite(tmp_path: Path) -> None:
    _run("sqlite", _sqlite_builder(tmp_path))


@pytest.mark.redis
@pytest.mark.timeout(150)
def test_model_redis(model_redis: RedisServer) -> None:
    _run("redis", _redis_builder(model_redis), model_redis)


@pytest.mark.postgres
@pytest.mark.timeout(150)
def test_model_postgres(postgres_url: str) -> None:
    _run("postgres", _postgres_builder(postgres_url))


# -- the checker itself ------------------------------------------------------------------------


def test_checker_counts_each_class() -> None:
    report = check(
        acknowledged=["a", "b", "c", "d"],
        unknown=["u", "v"],
        executed=["a", ("b", 0), ("b", 0), ("b", 1), "c", "u", "x"],
        completed=["a", "b", "c", "u", "c"],
    )
    assert report.lost == {"d"}
    assert report.recovered == {"u"}
    assert report.unexpected == {"x"}
    assert report.duplicated == {"b": 1}  # attempt 1 is a retry, not a duplicate
    assert report.completed_twice == {"c"}
    assert "lost 1" in str(report) and "recovered 1" in str(report)
    with pytest.raises(AssertionError, match="lost 1: d"):
        report.assert_ok(max_duplicates=5)


def test_checker_bounds_duplicates_by_the_faults() -> None:
    report = check(acknowledged=["a", "b"], executed=["a", "a", "a", "b"], completed=["a", "b"])
    assert report.duplicate_runs == 2 and report.within(2) and not report.within(1)
    report.assert_ok(max_duplicates=2)
    with pytest.raises(AssertionError, match="over the bound of 1"):
        report.assert_ok(max_duplicates=1)


def test_checker_counts_an_unknown_then_acknowledged_id_once() -> None:
    report = check(acknowledged=["a"], unknown=["a"], executed=["a"], completed=["a"])
    assert (report.acknowledged, report.unknown, report.recovered) == (1, 0, frozenset())
    report.assert_ok()
