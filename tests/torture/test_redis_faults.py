"""Network faults between the Redis broker and a private redis-server (``faultproxy``), and a
server that comes back empty.

What the faults show:

* **Reset during enqueue** (the reply to an applied write dropped, the request cut halfway,
  or the pooled connection reset beforehand): redis-py retries the command itself (the
  adapter's client has ``Retry(3)``); where the call still raises ``BrokerUnavailable`` the
  producer re-sends the same envelopes. Either way enqueue is idempotent on the job id:
  exactly one stream entry per job. For one job, a batch that fits one script call
  (``ENQUEUE_CHUNK``) and a batch of several calls in a MULTI/EXEC.
* **Reset during finish** (ack + result in one script): the job ends exactly once, is never
  delivered again, its waiters are signalled once.
* **Reset during fetch**: the jobs of a lost reply stay leased to nobody and come back after
  one lease; nothing is lost.
* **Blackhole during a blocking fetch**: the call gives up with ``BrokerUnavailable`` after
  one socket timeout (a timeout is not retried), then the same broker object works again
  once healed. With the default ``socket_timeout`` (10 s) that is 10 s for a
  ``fetch(block=30)`` (40.4 s when timeouts were retried 3 times); here the URL sets
  ``socket_timeout=1`` to keep the test short.
* **Restarted empty**: deliveries held before are refused, a missing consumer group is
  recreated (and reported), and idle fetching issues a handful of commands, not a hot loop.

Before each fault every script is loaded once (``_warm``): otherwise the fault would hit the
``NOSCRIPT`` round trip instead of the command under test.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from conveyor._clock import FakeClock
from conveyor._errors import BrokerUnavailable
from conveyor._message import Delivery, Envelope, JobStatus
from conveyor.brokers._port import Finish
from conveyor.brokers.redis import RedisBroker, _connect
from conveyor.brokers.redis._calls import ENQUEUE_CHUNK
from conveyor.brokers.redis._keys import GROUP, Keys
from conveyor.testing.checker import check
from conveyor.testing.conformance import envelope
from redis_server import RedisServer, unique_prefix

from .conftest import command_calls, pending_count, reset_command_stats, stream_entries
from .faultproxy import FaultProxy

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

LEASE = 30.0
QUEUE = "default"


def _replies_before_exec(calls: int) -> int:
    """Bytes a batch enqueue of ``calls`` script calls receives before EXEC's own reply:
    SCRIPT EXISTS (a pipeline asks it first), then +OK for MULTI and +QUEUED per call.
    Cutting after them drops exactly the reply to a transaction the server has run."""
    return len(b"*1\r\n:1\r\n") + len(b"+OK\r\n") + calls * len(b"+QUEUED\r\n")


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class Rig:
    """A broker on a fake clock that reaches a private server through the fault proxy."""

    broker: RedisBroker
    proxy: FaultProxy
    server: RedisServer
    prefix: str
    clock: FakeClock


@pytest.fixture
def rig(
    proxy: FaultProxy, fresh_redis_server: RedisServer, prefix: str, clock: FakeClock
) -> Iterator[Rig]:
    b = RedisBroker(proxy.url, prefix=prefix, clock=clock)
    _warm(b)
    try:
        yield Rig(b, proxy, fresh_redis_server, prefix, clock)
    finally:
        b.close()


def _warm(broker: RedisBroker) -> None:
    """Load every script the tests use (one job through another queue), and batch paths;
    make QUEUE's stream with a lone job, finished (the stream stays, empty), so a test's
    lone job takes enqueue_one.lua at once (a queue's first goes on to enqueue.lua)."""
    envs = [Envelope(f"warm-{i}", "warmup", b"w") for i in range(2)]
    broker.enqueue(envs)
    got = broker.fetch(["warmup"], "warm", 2, LEASE, 0.0)
    broker.renew(got, LEASE)
    broker.release(got[:1])
    broker.finish([Finish(d, JobStatus.SUCCEEDED, b"w") for d in got])
    broker.enqueue([Envelope("warm-lone", QUEUE, b"w")])
    got = broker.fetch([QUEUE], "warm", 1, LEASE, 0.0)
    broker.finish([Finish(d, JobStatus.SUCCEEDED, b"w") for d in got])


def _drain(broker: RedisBroker, clock: FakeClock | None = None) -> tuple[list[str], list[str]]:
    """Fetch and finish everything due; returns (ids delivered, ids whose finish held)."""
    executed: list[str] = []
    completed: list[str] = []
    if clock is not None:
        clock.advance(3 * LEASE)
    while got := broker.fetch([QUEUE], "drainer", 50, LEASE, 0.0):
        executed += [d.id for d in got]
        done = broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in got])
        completed += [d.id for d, ok in zip(got, done, strict=True) if ok]
    return executed, completed


# -- reset during enqueue --------------------------------------------------------------------


# One job; a batch that is one script call; a batch of three calls in a MULTI/EXEC.
@pytest.mark.parametrize("batch", [1, 20, 2 * ENQUEUE_CHUNK + 50])
@pytest.mark.parametrize("fault", ["reply dropped", "request cut", "reset before"])
def test_reset_during_enqueue_writes_each_job_exactly_once(
    rig: Rig, fault: str, batch: int
) -> None:
    broker, proxy, fresh_redis_server, prefix = rig.broker, rig.proxy, rig.server, rig.prefix
    envs = [envelope(QUEUE) for _ in range(batch)]
    ids = [e.id for e in envs]
    calls = -(-batch // ENQUEUE_CHUNK)  # enqueue script calls the batch takes
    reset_command_stats(fresh_redis_server)
    if fault == "reply dropped":
        proxy.cut("down", _replies_before_exec(calls) if calls > 1 else 0)
    elif fault == "request cut":
        proxy.cut("up", 20)
    else:
        proxy.reset()
    unknown: list[str] = []
    try:
        assert broker.enqueue(envs) == ids  # redis-py retried on its own
        print(f"{fault}, batch of {batch}: enqueue returned (the client retried)")
    except BrokerUnavailable:
        print(f"{fault}, batch of {batch}: BrokerUnavailable; the producer sends again")
        unknown = ids
        assert broker.enqueue(envs) == ids  # the producer's retry: the same envelopes
    assert proxy.stats.cuts + proxy.stats.resets == 1, "the fault was not injected"
    sent = command_calls(fresh_redis_server)
    if fault == "reply dropped":  # the write reached the server, then was sent again
        if batch == 1:  # the lone job's script, sent again, finds its id taken and writes
            # nothing; the batch script then answers the job that is there (3 calls)
            assert sent.get("evalsha", 0) == 3, sent
        else:
            assert sent.get("exec" if calls > 1 else "evalsha", 0) == 2, sent

    assert sorted(stream_entries(fresh_redis_server, prefix)) == sorted(ids)  # one entry per job
    records = broker.get(ids)
    assert all(r is not None and r.status is JobStatus.QUEUED for r in records)
    executed, completed = _drain(broker)
    report = check(acknowledged=ids, unknown=unknown, executed=executed, completed=completed)
    report.assert_ok(max_duplicates=0)
    assert stream_entries(fresh_redis_server, prefix) == []


# -- reset during finish ---------------------------------------------------------------------


def _finish_retrying(broker: RedisBroker, f: Finish) -> list[object]:
    """What the worker's finisher does: retry on BrokerError until the broker answers."""
    answers: list[object] = []
    for _ in range(10):
        try:
            answers.append(broker.finish([f]))
            return answers
        except BrokerUnavailable:
            answers.append("unavailable")
    raise AssertionError(f"finish never got through: {answers}")


def _deliver_one(broker: RedisBroker) -> tuple[Envelope, Delivery]:
    env = envelope(QUEUE)
    broker.enqueue([env])
    (d,) = broker.fetch([QUEUE], "c1", 1, LEASE, 0.0)
    return env, d


@pytest.mark.parametrize("outcome", ["succeeded", "retry"])
def test_reset_during_finish_ends_the_job_exactly_once(rig: Rig, outcome: str) -> None:
    broker, proxy, clock = rig.broker, rig.proxy, rig.clock
    env, d = _deliver_one(broker)
    assert broker.wait(env.id, 0.05) is None  # somebody waits: its end is signalled
    if outcome == "succeeded":
        f = Finish(d, JobStatus.SUCCEEDED, b"r")
    else:
        retry = Envelope(env.id, QUEUE, b"attempt 1", eta=clock.time() + 5)
        f = Finish(d, JobStatus.SCHEDULED, b"failed once", retry=retry)
    proxy.cut("down", 0)
    _finish_retrying(broker, f)
    assert proxy.stats.cuts == 1

    executed: list[object] = [(env.id, 0)]
    completed: list[str] = []
    if outcome == "retry":
        assert broker.get([env.id])[0].status is JobStatus.SCHEDULED  # type: ignore[union-attr]
        clock.advance(5)
        (again,) = broker.fetch([QUEUE], "c1", 5, LEASE, 0.0)  # the retry, exactly once
        assert (again.payload, again.deliveries) == (b"attempt 1", 1)
        executed.append((env.id, 1))
        assert broker.finish([Finish(again, JobStatus.SUCCEEDED, b"r")]) == [True]
    completed.append(env.id)
    record = broker.get([env.id])[0]
    assert record is not None and (record.status, record.result) == (JobStatus.SUCCEEDED, b"r")
    client = rig.server.client()
    assert client.llen(Keys(rig.prefix).done(env.id)) == 1  # waiters woken once, at the end
    client.close()
    clock.advance(3 * LEASE)
    assert broker.fetch([QUEUE], "c2", 10, LEASE, 0.0) == []  # never delivered again
    assert stream_entries(rig.server, rig.prefix) == []
    assert pending_count(rig.server, rig.prefix) == 0
    check(acknowledged=[env.id], executed=executed, completed=completed).assert_ok()  # type: ignore[arg-type]


def test_a_finish_whose_reply_was_lost_reports_that_it_took_effect(rig: Rig) -> None:
    """The contract: finish says, per delivery, whether its outcome was recorded. When the
    reply to an applied finish is lost, redis-py sends the script again, which finds the
    token already cleared and answers 0: the caller hears "refused, your lease was lost"
    for the outcome it just recorded (the worker logs a false lease-lost warning)."""
    env, d = _deliver_one(rig.broker)
    rig.proxy.cut("down", 0)
    answers = _finish_retrying(rig.broker, Finish(d, JobStatus.SUCCEEDED, b"r"))
    assert rig.broker.get([env.id])[0].status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
    assert answers[-1] == [True], f"the recorded finish was reported as {answers}"


# -- reset during fetch ----------------------------------------------------------------------


def test_reset_during_fetch_delays_jobs_by_one_lease_and_loses_none(rig: Rig) -> None:
    broker, proxy, clock = rig.broker, rig.proxy, rig.clock
    envs = [envelope(QUEUE) for _ in range(3)]
    ids = [e.id for e in envs]
    broker.enqueue(envs)
    proxy.cut("down", 0)  # the script ran: three jobs leased, the reply never arrives
    try:
        seen = broker.fetch([QUEUE], "c1", 3, LEASE, 0.0)
    except BrokerUnavailable:
        seen = []
    assert proxy.stats.cuts == 1
    assert seen == [], "the retried fetch found the jobs still queued: the cut missed"
    assert [r.status for r in broker.get(ids) if r] == [JobStatus.RUNNING] * 3
    clock.advance(LEASE - 1)
    assert broker.fetch([QUEUE], "c2", 3, LEASE, 0.0) == []  # leased to nobody, for now
    clock.advance(1)
    got = broker.fetch([QUEUE], "c2", 3, LEASE, 0.0)
    assert sorted(d.id for d in got) == sorted(ids)
    assert {d.deliveries for d in got} == {2}
    done = broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in got])
    report = check(
        acknowledged=ids,
        executed=[d.id for d in got],
        completed=[d.id for d, ok in zip(got, done, strict=True) if ok],
    )
    report.assert_ok(max_duplicates=0)


# -- blackhole during a blocking fetch -------------------------------------------------------


def test_blackhole_during_blocking_fetch_gives_up_in_bounded_time_then_heals(
    proxy: FaultProxy,
    prefix: str,
) -> None:
    socket_timeout = 1.0
    broker = RedisBroker(f"{proxy.url}?socket_timeout={socket_timeout:g}", prefix=prefix)
    try:
        _warm(broker)
        attempts = 1  # the adapter's retry does not send a timed-out call again
        bound = attempts * socket_timeout + 3 * 1.0 + 2.0  # + backoff caps + slack
        outcome: list[object] = []

        def blocked_fetch() -> None:
            started = time.monotonic()
            try:
                outcome.append(broker.fetch([QUEUE], "c1", 1, LEASE, 60.0))
            except BrokerUnavailable as exc:
                outcome.append(exc)
            outcome.append(time.monotonic() - started)

        thread = threading.Thread(target=blocked_fetch, daemon=True)
        thread.start()
        time.sleep(0.3)  # inside XREAD BLOCK by now
        proxy.blackhole()
        thread.join(45)
        assert not thread.is_alive(), "fetch still blocked 45 s into a blackhole"
        result, took = outcome
        print(f"blackholed fetch(block=60): {result!r} after {took:.1f} s (about {bound:.0f})")
        assert isinstance(result, BrokerUnavailable) or result == []
        assert float(took) < 30  # type: ignore[arg-type]  # its retries, not its 60 s block

        proxy.heal()
        env = envelope(QUEUE)
        assert broker.enqueue([env]) == [env.id]  # the same broker object, reconnected
        (d,) = broker.fetch([QUEUE], "c1", 1, LEASE, 2.0)
        assert d.id == env.id
        assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r")]) == [True]
    finally:
        broker.close()


def test_default_client_settings_bound_every_blocking_call() -> None:
    """No hang by construction: the default URL gets a socket timeout, and a blocking read
    is cut into slices shorter than it. Worst case before BrokerUnavailable, blackholed:
    one socket_timeout, 10 s (a timeout is not retried; 40.4 s when it was)."""
    client = _connect.connect(_connect.parse("redis://127.0.0.1:1/0"))
    try:
        timeout = client.connection_pool.connection_kwargs["socket_timeout"]
        assert timeout == _connect.DEFAULT_SOCKET_TIMEOUT
        assert _connect.block_slice(client) < timeout
        retry = client.connection_pool.connection_kwargs["retry"]
        assert 0 < retry.get_retries() <= 3
    finally:
        client.close()


# -- restarted empty -------------------------------------------------------------------------


# What a client sends; INFO commandstats also counts the commands scripts run inside.
_CLIENT_COMMANDS = ("evalsha", "eval", "script|load", "xread", "time", "hmget", "hget")


def _idle_calls(server: RedisServer, broker: RedisBroker, seconds: float) -> dict[str, int]:
    """Commands ``broker`` sent while it fetched an empty queue like a worker does."""
    reset_command_stats(server)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        assert broker.fetch([QUEUE], "idle", 10, LEASE, min(left, 1.0)) == []
    calls = command_calls(server)
    print(f"server-side commands over {seconds} s of idle fetching: {calls}")
    return {k: v for k, v in calls.items() if k in _CLIENT_COMMANDS}


def test_restarted_empty_the_broker_recovers_without_a_hot_loop(
    fresh_redis_server: RedisServer,
    prefix: str,
) -> None:
    broker = RedisBroker(fresh_redis_server.url, prefix=prefix)
    try:
        before = [envelope(QUEUE) for _ in range(3)]
        broker.enqueue(before)
        (held,) = broker.fetch([QUEUE], "c1", 1, LEASE, 0.0)
        fresh_redis_server.restart(empty=True)  # no persistence: everything is gone

        calls = _idle_calls(fresh_redis_server, broker, 2.0)
        assert sum(calls.values()) <= 20, f"hot loop: {calls}"
        assert broker.finish([Finish(held, JobStatus.SUCCEEDED, b"r")]) == [False]
        assert broker.get([e.id for e in before]) == [None, None, None]  # lost with Redis

        after = envelope(QUEUE)
        broker.enqueue([after])
        (d,) = broker.fetch([QUEUE], "c1", 1, LEASE, 1.0)
        assert d.id == after.id
        assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r")]) == [True]
    finally:
        broker.close()


def test_a_lost_consumer_group_is_recreated_loudly_and_its_entries_delivered(
    fresh_redis_server: RedisServer,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NOGROUP: the stream survived but its group did not (a stream restored or written
    without it). fetch recreates the group from the start of the stream and warns."""
    broker = RedisBroker(fresh_redis_server.url, prefix=prefix)
    try:
        envs = [envelope(QUEUE) for _ in range(2)]
        broker.enqueue(envs)
        client = fresh_redis_server.client()
        stream = Keys(prefix).stream(QUEUE, 0)
        assert client.xgroup_destroy(stream, GROUP) == 1
        client.close()
        with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
            got = broker.fetch([QUEUE], "c1", 10, LEASE, 0.0)
        assert sorted(d.id for d in got) == sorted(e.id for e in envs)
        assert any("consumer group" in r.getMessage() for r in caplog.records)
        done = broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in got])
        assert done == [True, True]
        calls = _idle_calls(fresh_redis_server, broker, 2.0)
        assert sum(calls.values()) <= 20, f"hot loop: {calls}"
    finally:
        broker.close()


def test_a_fetch_blocked_while_redis_restarts_empty_returns_and_the_broker_works(
    fresh_redis_server: RedisServer,
    prefix: str,
) -> None:
    broker = RedisBroker(fresh_redis_server.url, prefix=prefix)
    try:
        broker.enqueue([envelope(QUEUE)])
        broker.fetch([QUEUE], "c1", 1, LEASE, 0.0)
        outcome: list[object] = []

        def blocked() -> None:
            try:
                outcome.append(broker.fetch([QUEUE], "c2", 1, LEASE, 3.0))
            except BrokerUnavailable as exc:
                outcome.append(exc)

        thread = threading.Thread(target=blocked, daemon=True)
        thread.start()
        time.sleep(0.3)
        fresh_redis_server.restart(empty=True)
        thread.join(15)
        assert not thread.is_alive()
        assert outcome == [[]] or isinstance(outcome[0], BrokerUnavailable), outcome
        env = envelope(QUEUE)
        broker.enqueue([env])
        assert [d.id for d in broker.fetch([QUEUE], "c2", 1, LEASE, 1.0)] == [env.id]
    finally:
        broker.close()
