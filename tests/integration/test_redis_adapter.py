"""What only the Redis adapter has: its key schema, stream entries, restarts, ACLs, sweeps."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.crc

from conveyor._clock import FakeClock, SystemClock
from conveyor._errors import (
    BrokerError,
    BrokerUnavailable,
    InvalidName,
    InvalidURL,
    TransactionConflict,
    ValidationError,
)
from conveyor._message import Delivery, Envelope, JobStatus, WorkerInfo, new_job_id
from conveyor.brokers import Finish, open_broker
from conveyor.brokers.redis import RedisBroker, _async
from conveyor.brokers.redis import broker as broker_module
from conveyor.brokers.redis._calls import ENQUEUE_CHUNK, enqueue_calls
from conveyor.brokers.redis._connect import Pinned, parse
from conveyor.brokers.redis.store import RedisKV

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redis_server import (
    RedisServer,
    fresh_redis_server,
    redis_server,
    unique_prefix,
)

pytestmark = pytest.mark.redis
__all__ = ["fresh_redis_server", "redis_server"]  # fixtures, imported so pytest finds them

SRC = Path(__file__).resolve().parents[2] / "src" / "conveyor"


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def broker(redis_server: RedisServer, prefix: str) -> Iterator[RedisBroker]:
    b = RedisBroker(redis_server.url, prefix=prefix)
    yield b
    b.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


def env(queue: str = "default", **kw: object) -> Envelope:
    job_id = new_job_id()
    return Envelope(job_id, queue, b"payload " + job_id.encode(), **kw)  # type: ignore[arg-type]


def ours(raw: redis.Redis, prefix: str) -> list[str]:
    """Every key of this test's prefix (SCAN is fine in a test, never in src)."""
    return sorted(k.decode() for k in raw.scan_iter(match=f"*{prefix}*", count=1000))


def fetch(
    b: RedisBroker,
    consumer: str = "c1",
    *,
    count: int = 10,
    lease: float = 60.0,
    block: float = 0.0,
    queues: tuple[str, ...] = ("default",),
) -> list[Delivery]:
    return b.fetch(list(queues), consumer, count, lease, block)


# -- key schema --------------------------------------------------------------------------


def test_every_key_is_under_the_prefix_and_broker_keys_share_one_slot(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    broker.enqueue([env(), env("images", priority=7), env(eta=time.time() + 60, key="u")])
    [d, *_] = fetch(broker, queues=("default", "images"))
    broker.finish([Finish(d, JobStatus.FAILED, b"r", reason="x")])
    broker.kv.set("cache:a", b"1")
    assert broker.kv.lock_acquire("inv", "tok", 30) == 1
    keys = ours(raw, prefix)
    broker_keys = [k for k in keys if k.startswith("{" + prefix + "}:")]
    kv_keys = [k for k in keys if k.startswith("{" + prefix + ":kv:")]
    lock_keys = [k for k in keys if k.startswith("{" + prefix + ":lock:")]
    assert sorted(broker_keys + kv_keys + lock_keys) == keys
    assert len({redis.crc.key_slot(k.encode()) for k in broker_keys}) == 1
    assert "{" + prefix + "}:q:images:s7" in broker_keys
    assert kv_keys == ["{" + prefix + ":kv:cache:a}"]
    lock = "{" + prefix + ":lock:inv}"
    assert lock_keys == [lock, lock + ":fence"]
    assert redis.crc.key_slot(lock.encode()) == redis.crc.key_slot((lock + ":fence").encode())


def test_src_never_sends_keys_config_or_flushall() -> None:
    sources = [*(SRC / "brokers" / "redis").glob("*.*")]  # the broker and its store
    banned = re.compile(
        r"""['"](KEYS|CONFIG|FLUSHALL|FLUSHDB)['"]|\.(keys|config_\w+|flushall)\(""",
        re.IGNORECASE,
    )
    for path in sources:
        if path.suffix in (".py", ".lua"):
            assert not banned.search(path.read_text()), path


def test_bad_prefix_and_cluster_url_are_refused(redis_server: RedisServer) -> None:
    with pytest.raises(InvalidURL):
        RedisBroker("redis+cluster://127.0.0.1:7000/1")  # a cluster has database 0 only
    with pytest.raises(InvalidName, match="prefix"):
        RedisBroker(redis_server.url, prefix="a{b}")


def test_sentinel_url_is_parsed() -> None:
    t = parse("redis+sentinel://app:s%40cret@s1:26379,s2/mymaster/2")
    assert t.hosts == (("s1", 26379), ("s2", 26379))
    assert (t.service, t.db, t.username, t.password) == ("mymaster", 2, "app", "s@cret")
    assert "s@cret" not in repr(t) and "s%40cret" not in repr(t)


def test_open_broker_builds_it_from_the_url(redis_server: RedisServer, prefix: str) -> None:
    b = open_broker(redis_server.url, prefix=prefix)
    assert isinstance(b, RedisBroker)
    b.close()


# -- enqueue -----------------------------------------------------------------------------


def test_a_retried_enqueue_writes_one_stream_entry(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    e = env()
    for _ in range(3):  # what redis-py's retry does after a timeout the server had applied
        assert broker.enqueue([e]) == [e.id]
    assert raw.xlen("{" + prefix + "}:q:default:s0") == 1
    assert [d.id for d in fetch(broker)] == [e.id]


def test_a_retried_lone_enqueue_on_a_made_stream_writes_one_entry_and_one_event(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # The stream exists (its first job made it): enqueue_one.lua itself finds the id taken.
    broker.enqueue([env()], [b"first"])
    e = env()
    for _ in range(3):
        assert broker.enqueue([e], [b"again"]) == [e.id]
    assert raw.xlen("{" + prefix + "}:q:default:s0") == 2
    assert broker.read_events(None, 0.0, 10) == [("1", b"first"), ("2", b"again")]


def test_a_lone_job_on_a_new_stream_makes_it_lists_its_queue_and_logs_its_event(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # enqueue_one.lua makes no stream: it writes nothing, and enqueue.lua makes the stream,
    # its consumer group and the queue's listing; the next job at that priority is its own.
    jobs = [env("fresh"), env("fresh"), env("fresh", priority=3), env("fresh", priority=3)]
    for i, e in enumerate(jobs):
        assert broker.enqueue([e], [b"e%d" % i]) == [e.id]
    assert raw.smembers("{" + prefix + "}:queues") == {b"fresh"}
    assert raw.xlen("{" + prefix + "}:q:fresh:s0") == raw.xlen("{" + prefix + "}:q:fresh:s3") == 2
    assert broker.read_events(None, 0.0, 10) == [(str(i + 1), b"e%d" % i) for i in range(4)]
    got = fetch(broker, queues=("fresh",), count=10)
    assert [d.id for d in got] == [jobs[2].id, jobs[3].id, jobs[0].id, jobs[1].id]


# -- enqueue_one.lua against enqueue.lua ---------------------------------------------------


def _dump(raw: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key of a prefix's tag as a comparable value: the tag made ``{P}``, a job
    stream's entry ids made their place in it (they carry the server's time), TTLs as set
    or not."""
    tag = "{" + prefix + "}:"
    keys = sorted(k.decode() for k in raw.scan_iter(match=tag + "*", count=1000))
    places: dict[tuple[str, bytes], int] = {}  # (stream, entry id): its place
    for k in keys:
        if raw.type(k) == b"stream" and k != tag + "events":
            places.update({(k, sid): i for i, (sid, _) in enumerate(raw.xrange(k))})
    out: dict[str, Any] = {}
    for k in keys:
        kind = raw.type(k).decode()
        value: Any
        if kind == "hash":
            value = raw.hgetall(k)
            if value.get(b"sid"):  # its entry's place, or gone (a purged stream)
                stream = f"{tag}q:{value[b'queue'].decode()}:s{value[b'priority'].decode()}"
                value[b"sid"] = places.get((stream, value[b"sid"]), "gone")
        elif kind == "stream":
            value = (
                [(places.get((k, i), i), f) for i, f in raw.xrange(k)],
                sorted((g["name"], g["pending"]) for g in raw.xinfo_groups(k)),
            )
        elif kind == "set":
            value = sorted(raw.smembers(k))
        elif kind == "list":
            value = raw.lrange(k, 0, -1)
        elif kind == "zset":
            value = raw.zrange(k, 0, -1, withscores=True)
        else:
            value = raw.get(k)
        out["{P}:" + k[len(tag) :]] = (kind, value, raw.pttl(k) > 0)
    return out


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_lone_job_writes_what_enqueue_lua_writes(
    redis_server: RedisServer, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    # enqueue_one.lua writes out for one job what enqueue.lua and common.lua's helpers do
    # for any number: the same keys, records, entries, listing, event numbers and trims,
    # whatever the state it meets (first job at a priority, an id taken or expired, a done
    # list alone, a purged stream, a lost event counter or one that is no count, event
    # numbers of 15 digits, an event log of another type).
    # Each job goes to two prefixes, the usual way and through enqueue.lua, then compared.
    one, ref = unique_prefix(), unique_prefix()
    clock = FakeClock(1_800_000_000.0)
    brokers = {
        p: RedisBroker(redis_server.url, prefix=p, clock=clock, events_kept=5) for p in (one, ref)
    }
    loads: dict[str, list[tuple[list[str], int]]] = {one: [], ref: []}
    fallbacks = Counter[str]()  # lone jobs sent on to enqueue.lua

    def counted(*args: Any, **kw: Any) -> Any:
        fallbacks[args[2][0].id] += 1
        return enqueue_calls(*args, **kw)

    def enqueue(e: Envelope, event: bytes | None = b"ev") -> None:
        for p, b in brokers.items():
            with monkeypatch.context() as m:
                if p == ref:
                    m.setattr(broker_module, "alone", lambda _: None)
                    m.setattr(_async, "alone", lambda _: None)
                else:
                    m.setattr(broker_module, "enqueue_calls", counted)
                    m.setattr(_async, "enqueue_calls", counted)
                events = [] if event is None else [event + e.id.encode()]
                loads[p].append(
                    asyncio.run(b._enqueue_load_async([e], events))
                    if asynchronous
                    else b._enqueue_load([e], events)
                )
        assert loads[one] == loads[ref]
        assert _dump(raw, one) == _dump(raw, ref)
        clock.advance(0.001)

    def on_both(*command: Any) -> None:
        for p in (one, ref):
            raw.execute_command(*(str(c).replace("{P}", "{" + p + "}") for c in command))

    try:
        fixed, firsts = env(), [env(), env(priority=3), env("other", priority=9)]
        expired, signal, purged = env(), env(), env()
        for e in [firsts[0], env(), firsts[1], fixed, fixed, firsts[2]]:
            enqueue(e)
        enqueue(env(), event=None)
        for _ in range(20):  # past a multiple of 16 events: a trim to the newest 5
            enqueue(env())
        # The counter lost (moved past the log's last id), no count (taken as lost), and
        # numbers of 15 digits.
        for command in (["DEL"], ["SET", "abc"], ["SET", 10**14 - 2]):
            on_both(command[0], "{P}:events:n", *command[1:])
            for _ in range(3):
                enqueue(env())
        # an ended record whose expiry passed, and its done list
        on_both("HSET", "{P}:job:" + expired.id, "status", "succeeded", "expires_at", "1")
        on_both("LPUSH", "{P}:done:" + expired.id, "1")
        enqueue(expired)
        on_both("LPUSH", "{P}:done:" + signal.id, "1")  # a done list alone
        enqueue(signal)
        on_both("DEL", "{P}:q:default:s0")  # purged between two calls
        enqueue(purged)
        on_both("DEL", "{P}:events")
        on_both("SET", "{P}:events", "not a stream")  # its event left out, not the job
        enqueue(env())
        on_both("DEL", "{P}:events:n")
        on_both("RPUSH", "{P}:events:n", "x")  # and a counter that is no count
        enqueue(env())
        on_both("SADD", "{P}:paused", "default")
        enqueue(env())
        # enqueue.lua took only the jobs enqueue_one.lua leaves to it: a queue's first at a
        # priority (its stream made), an id taken, expired or signalled.
        taken = [*firsts, fixed, expired, signal, purged]
        assert fallbacks == Counter({e.id: 1 for e in taken})
    finally:
        for b in brokers.values():
            b.close()


def test_a_lone_job_is_updated_at_its_entry_time_or_the_injected_clock(
    redis_server: RedisServer, broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # enqueue_one.lua reads no TIME: the server's time is its stream entry id's. (The
    # queue's first job makes its stream through enqueue.lua, which reads TIME before its
    # XADD: a millisecond may pass between them, so the lone job checked is the second.)
    broker.enqueue([env()])
    before = int(raw.time()[0]) * 1000
    e = env()
    broker.enqueue([e])
    sid = raw.hget("{" + prefix + "}:job:" + e.id, "sid")
    assert isinstance(sid, bytes)
    [record] = broker.get([e.id])
    assert record is not None
    assert round(record.updated_at * 1000) == int(sid.split(b"-")[0]) >= before
    clock = FakeClock(1_000_000.0)
    faked = RedisBroker(redis_server.url, prefix=prefix, clock=clock)
    f = env()
    faked.enqueue([f])
    [record] = faked.get([f.id])
    assert record is not None and record.updated_at == 1_000_000.0
    faked.close()


def test_a_batch_publishes_its_joined_events_but_those_of_jobs_not_written(
    broker: RedisBroker,
) -> None:
    # A batch's events reach the script joined into entry bodies (64 each): appended as they
    # are when every job is written, else cut back into events, in order.
    taken = env()
    broker.enqueue([taken])
    tail = broker.events_tail()
    jobs = [env() for _ in range(130)]
    jobs[100] = taken  # written already: no event
    jobs[120] = jobs[5]  # twice in the batch: one event
    events = [b"e%d" % i for i in range(130)]
    assert broker.enqueue(jobs, events) == [j.id for j in jobs]
    wanted = [e for i, e in enumerate(events) if i not in (100, 120)]
    assert [e for _, e in broker.read_events(tail, 0.0, 200)] == wanted
    more = [env() for _ in range(70)]
    broker.enqueue(more, [b"m%d" % i for i in range(70)])
    got = broker.read_events(str(int(tail) + len(wanted)), 0.0, 200)
    assert [e for _, e in got] == [b"m%d" % i for i in range(70)]


def test_the_event_log_is_trimmed_once_every_16_events(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # A trim steps over the head node's deleted entries one by one: made by every lone
    # job's enqueue it was as costly as the rest of its event.
    broker.events_kept = 1
    log = "{" + prefix + "}:events"
    for i in range(15):
        broker.enqueue([env()], [b"e%d" % i])
    assert raw.xlen(log) == 15  # not trimmed yet: within the 15 the log may keep over
    broker.enqueue([env()], [b"e15"])
    assert raw.xlen(log) == 1  # the 16th event trims to the cap
    broker.publish([b"p%d" % i for i in range(16)])  # a call of 16 or more always trims
    assert raw.xlen(log) == 1


def test_a_batch_over_several_chunks_and_queues_is_written_whole_and_in_order(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    n = ENQUEUE_CHUNK * 2 + 7  # three script calls in one MULTI
    batch = [env("a" if i % 3 else "b", priority=i % 2) for i in range(n)]
    assert broker.enqueue(batch) == [e.id for e in batch]
    tag = "{" + prefix + "}"
    lengths = {q: raw.xlen(f"{tag}:q:{q}:s0") + raw.xlen(f"{tag}:q:{q}:s1") for q in "ab"}
    assert lengths == {
        "a": sum(e.queue == "a" for e in batch),
        "b": sum(e.queue == "b" for e in batch),
    }
    assert raw.smembers(f"{tag}:queues") == {b"a", b"b"}
    got = [d.id for d in fetch(broker, count=n, queues=("a", "b"))]
    # Priority 1 first, then 0; FIFO within each queue and priority. (Across queues the
    # order is the entries' millisecond, which a batch mostly shares.)
    high = {e.id for e in batch if e.priority == 1}
    assert set(got[: len(high)]) == high
    for q in "ab":
        for level in (0, 1):
            mine = [e.id for e in batch if e.queue == q and e.priority == level]
            assert [i for i in got if i in set(mine)] == mine
    assert [r and r.status for r in broker.get([e.id for e in batch])] == [JobStatus.RUNNING] * n


def test_a_batch_repeating_an_id_or_a_unique_key_writes_each_once(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    first, other = env(), env(key="report:1")
    same_key = env(key="report:1")
    ids = broker.enqueue([first, other, first, same_key])
    assert ids == [first.id, other.id, first.id, other.id]
    assert raw.xlen("{" + prefix + "}:q:default:s0") == 2
    assert broker.get([same_key.id]) == [None]


def test_a_new_job_on_the_id_of_an_expired_one_starts_afresh(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    clock = FakeClock()
    broker = RedisBroker(redis_server.url, prefix=prefix, clock=clock)
    e = env()
    broker.enqueue([e])
    [d] = fetch(broker)
    broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r", result_ttl=10)])
    clock.advance(11)  # the record is logically expired; its hash and signal are still there
    assert broker.get([e.id]) == [None]
    assert broker.enqueue([e]) == [e.id]
    assert raw.llen("{" + prefix + "}:done:" + e.id) == 0  # no stale wake-up for waiters
    [record] = broker.get([e.id])
    assert record is not None
    assert record.status is JobStatus.QUEUED and record.result is None
    assert [x.id for x in fetch(broker)] == [e.id]
    broker.close()


def _in_use(pool: redis.ConnectionPool) -> list[object]:
    """Connections taken from the pool and not given back (redis-py 5.3 has no public way to
    ask; a BlockingConnectionPool keeps its idle ones in ``pool.pool``)."""
    idle = list(pool.pool.queue)  # type: ignore[attr-defined]
    return [c for c in pool._connections if c not in idle]  # type: ignore[attr-defined]


def test_held_connections_are_bounded_and_go_back_to_the_pool_with_their_thread(
    broker: RedisBroker,
) -> None:
    client = broker._client
    pinned = Pinned(limit=2)
    inside = threading.Barrier(5)
    replies: list[object] = []

    def call() -> None:
        replies.append(pinned.call(client, "ECHO", "hi"))
        inside.wait(timeout=10)  # all four threads are alive at once here
        inside.wait(timeout=10)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    inside.wait(timeout=10)
    held = pinned._count
    inside.wait(timeout=10)
    for t in threads:
        t.join(timeout=10)
    gc.collect()
    assert replies == [b"hi"] * 4
    assert held == 2  # two threads hold one each; the other two went through the pool
    assert pinned._count == 0
    assert not _in_use(client.connection_pool)


def _eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.02)


@pytest.mark.parametrize("shards", [None, 4])
def test_closing_an_app_closes_its_connections(
    fresh_redis_server: RedisServer, shards: int | None
) -> None:
    # close() closed the client, which leaves a pool it was given open: every app a
    # process opened and closed kept its sockets (2 each; 6 with 4 shards).
    from conveyor import Conveyor

    raw = fresh_redis_server.client()
    url = fresh_redis_server.url + (f"?shards={shards}" if shards else "")

    def others() -> int:
        return len(raw.client_list()) - 1  # the raw client's own

    for _ in range(3):
        app = Conveyor(url, prefix=unique_prefix())

        @app.task
        def t() -> None: ...

        t.delay()
        app.broker.fetch(["default"], "c", 1, 30.0, 0.0)
        app.broker.read_events(None, 0.05, 10)
        assert others() > 0
        app.close()
        _eventually(lambda: others() == 0)  # the server hears of a closed socket a moment on
    raw.close()


@pytest.mark.parametrize("shards", [None, 2])
def test_async_with_an_app_closes_its_asyncio_connections(
    fresh_redis_server: RedisServer, shards: int | None
) -> None:
    # FastAPI's lifespan (`async with app`): the asyncio client of the loop stayed open, one
    # connection more per lifespan, reaped by the GC with a ResourceWarning.
    from conveyor import Conveyor

    raw = fresh_redis_server.client()

    async def lifespans() -> None:
        for _ in range(3):
            url = fresh_redis_server.url + (f"?shards={shards}" if shards else "")
            async with Conveyor(url, prefix=unique_prefix()) as app:

                @app.task
                def t() -> None: ...

                job = await t.delay_async()
                with pytest.raises(TimeoutError):
                    await job.result_async(timeout=0.05)
                assert len(raw.client_list()) > 1
            _eventually(lambda: len(raw.client_list()) == 1)  # the raw client's own

    asyncio.run(lifespans())
    raw.close()


@contextlib.contextmanager
def _worker_thread(app: Any, concurrency: int) -> Iterator[None]:
    """A worker of ``app`` running in a thread while the block runs."""
    from conveyor.worker import Worker

    worker = Worker(app, concurrency=concurrency)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(10)


@pytest.mark.parametrize("shards", [None, 2])
def test_many_async_waits_share_one_connection_and_leave_the_pool_to_enqueues(
    fresh_redis_server: RedisServer, shards: int | None
) -> None:
    # Each result_async held a pooled connection in its BLMOVE while the job ran: with the
    # pool's connections all waiting (128 by default, 8 here), an enqueue waited for one
    # (?timeout=, 30 s by default) and then failed as if Redis were away.
    from conveyor import Conveyor

    raw = fresh_redis_server.client()
    shards_option = f"&shards={shards}" if shards else ""
    url = f"{fresh_redis_server.url}?max_connections=8&timeout=3{shards_option}"
    app = Conveyor(url, prefix=unique_prefix())

    @app.task
    def double(i: int) -> int:
        return 2 * i

    async def main() -> None:
        jobs = [await double.delay_async(i) for i in range(40)]
        waits = [asyncio.create_task(job.result_async(timeout=30)) for job in jobs]
        await asyncio.sleep(0.3)  # every one asleep
        blocked = [c for c in raw.client_list() if c["cmd"] in ("blpop", "blmove")]
        assert len(blocked) <= 2  # a shard's blocked read each
        await asyncio.wait_for(double.delay_async(-1), 2)
        with _worker_thread(app, 4):
            assert await asyncio.gather(*waits) == [2 * i for i in range(40)]
            # One more, waited for alone once the others are done: woken as at once.
            job = await double.delay_async(21)
            assert await job.result_async(timeout=5) == 42
        await app.aclose()

    asyncio.run(main())
    app.close()
    raw.close()


def test_an_async_wait_is_woken_after_the_shared_read_failed_to_connect(
    fresh_redis_server: RedisServer,
) -> None:
    # The loop's shared read (_async._DoneLists) that failed to get its connection (a
    # restarting Redis, a full pool) stayed marked as running: every later result_async of
    # the loop waited out its whole slice or timeout though its job had ended.
    import inspect

    from conveyor import Conveyor

    app = Conveyor(fresh_redis_server.url, prefix=unique_prefix())

    @app.task
    def one() -> int:
        return 1

    async def main() -> None:
        job = await one.delay_async()
        client, _ = app.broker._aclient()  # type: ignore[attr-defined]
        pool = client.connection_pool
        real, failed = pool.get_connection, []

        async def once(*args: Any, **kwargs: Any) -> Any:
            stack = inspect.stack()
            if not failed and any(
                f.function == "_run" and f.filename == _async.__file__ for f in stack
            ):
                failed.append(True)
                raise redis.ConnectionError("connection refused (injected)")
            return await real(*args, **kwargs)

        pool.get_connection = once
        for _ in range(5):  # a wait whose look took its whole timeout (a loaded machine)
            with pytest.raises(TimeoutError):  # did not sleep: no shared read yet
                await job.result_async(timeout=1.0)
            if failed:
                break
        assert failed
        with _worker_thread(app, 1):
            started = time.monotonic()
            assert await job.result_async(timeout=5) == 1
            assert time.monotonic() - started < 2.0
        await app.aclose()

    asyncio.run(main())
    app.close()


@pytest.mark.parametrize("shards", [None, 2])
def test_a_closed_loops_asyncio_client_is_dropped_with_its_sockets(
    fresh_redis_server: RedisServer, shards: int | None, recwarn: pytest.WarningsRecorder
) -> None:
    # Each asyncio.run is a loop of its own, with a client of its own: a closed loop's was
    # kept (its connections hold the loop, so the weak key never went), its socket open
    # (closing a loop closes none), one more per call; app.close() then left each to the
    # GC, a ResourceWarning apiece.
    from conveyor import Conveyor

    url = fresh_redis_server.url + (f"?shards={shards}" if shards else "")
    app = Conveyor(url, prefix=unique_prefix())

    @app.task
    def t() -> None: ...

    job = t.delay()

    async def look() -> None:
        with pytest.raises(TimeoutError):
            await job.result_async(0)

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    b = app.broker
    parts = [b] if shards is None else [*b._parts(), b._home]  # type: ignore[attr-defined]
    asyncio.run(look())
    before = fds()
    for _ in range(100):
        asyncio.run(look())
    assert fds() <= before  # the last loop's client: one socket, and the one before it gone
    assert [len(p._async) <= 1 for p in parts] == [True] * len(parts)
    app.close()
    gc.collect()
    assert [str(w.message) for w in recwarn if w.category is ResourceWarning] == []


def test_a_lone_command_on_a_held_connection_raises_its_error_and_survives_a_reset(
    broker: RedisBroker, prefix: str
) -> None:
    # One command goes without a pipeline's framing (Pinned._one): an error reply raises,
    # read (the connection stays in step); a broken socket sends it on the ordinary path.
    client, pinned = broker._client, Pinned()
    key = "{" + prefix + "}:text"
    assert pinned.pipeline(client, ("SET", key, "not a number")) == [b"OK"]
    with pytest.raises(redis.ResponseError, match="not an integer"):
        pinned.pipeline(client, ("INCR", key))
    assert pinned.call(client, "ECHO", "in step") == b"in step"
    pinned._conn(client)._sock.close()  # reset under it
    assert pinned.pipeline(client, ("ECHO", "again")) == [b"again"]
    assert pinned.call(client, "ECHO", "held") == b"held"


class _Stopped(BaseException):
    """What a job thread's cancel or time limit raises in it (worker/_threads.py)."""


@pytest.mark.parametrize("commands", [1, 2], ids=["one command", "a pipeline"])
def test_an_exception_between_send_and_read_leaves_no_reply_for_the_next_command(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch, commands: int
) -> None:
    # A job thread's cancel or time limit arrives as an exception at any bytecode
    # (PyThreadState_SetAsyncExc), also between a held connection's send and its read: the
    # reply left unread must not be read as the thread's next command's (a task that
    # catches SoftTimeLimit and enqueues, or the thread's next job).
    client, pinned = broker._client, Pinned()
    conn = pinned._conn(client)
    send = conn.send_packed_command

    def sent_then_stopped(*args: Any, **kw: Any) -> None:
        send(*args, **kw)
        raise _Stopped

    with monkeypatch.context() as m:
        m.setattr(conn, "send_packed_command", sent_then_stopped)
        with pytest.raises(_Stopped):
            pinned.pipeline(client, *[("ECHO", f"left {i}") for i in range(commands)])
    assert pinned.call(client, "ECHO", "next") == b"next"
    assert pinned.pipeline(client, ("ECHO", "a"), ("ECHO", "b")) == [b"a", b"b"]


# -- stream entries ----------------------------------------------------------------------


def test_garbage_entry_is_delivered_raw_and_the_consumer_goes_on(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    stream = "{" + prefix + "}:q:default:s0"
    broker.enqueue([good := env()])
    raw.xadd(stream, {"payload": b"\x00not a message"})
    raw.xadd(stream, {"some": "thing"})
    got = fetch(broker)
    assert got[0].id == good.id
    garbage = got[1:]
    assert [d.payload for d in garbage] == [b"\x00not a message", b'["some","thing"]']
    assert all(d.id.startswith("raw-") and d.deliveries == 1 for d in garbage)
    # The worker dead-letters them; they are kept with their raw payload.
    oks = broker.finish([Finish(d, JobStatus.DEAD, None, reason="undecodable") for d in got])
    assert oks == [True, True, True]
    dead = broker.entries(JobStatus.DEAD, "default", 10)
    assert {e.payload for e in dead} >= {b"\x00not a message"}
    assert raw.xlen(stream) == 0
    broker.enqueue([after := env()])
    assert [d.id for d in fetch(broker)] == [after.id]


def test_stale_finish_leaves_the_live_entry_pending(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    b = RedisBroker(redis_server.url, prefix=prefix)
    b.enqueue([e := env()])
    [stale] = fetch(b, "zombie", lease=0.05)
    time.sleep(0.1)
    [live] = fetch(b, "live")
    assert b.finish([Finish(stale, JobStatus.SUCCEEDED, b"zombie")]) == [False]
    assert b.renew([stale], 60) == [b.renew([live], 60)[0].LOST]
    pending = raw.xpending_range("{" + prefix + "}:q:default:s0", "conveyor", "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"live"]  # the stale renew did not steal it
    assert b.finish([Finish(live, JobStatus.SUCCEEDED, b"live")]) == [True]
    [record] = b.get([e.id])
    assert record is not None and record.result == b"live"
    b.close()


def test_the_sweep_gives_an_idle_entry_of_a_live_lease_back_to_its_owner(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    """The sweep claims entries idle longer than sweep_idle; one whose job still holds a live
    lease (its expiry: the job's score in the running index) goes straight back to the
    lease holder, and is not delivered again."""
    b = RedisBroker(redis_server.url, prefix=prefix, sweep_idle=0.1)
    b.enqueue([env()])
    [held] = fetch(b, "owner", lease=60.0)
    time.sleep(0.25)  # idle past sweep_idle, but the lease runs for a minute
    assert fetch(b, "sweeper") == []
    pending = raw.xpending_range("{" + prefix + "}:q:default:s0", "conveyor", "-", "+", 10)
    assert [p["consumer"] for p in pending] == [b"owner"]
    assert b.finish([Finish(held, JobStatus.SUCCEEDED, b"r")]) == [True]
    b.close()


class _OffClock(SystemClock):
    """The real clock of a machine whose clock is off by ``skew`` seconds."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_a_delay_is_kept_on_the_servers_clock_whatever_the_senders_clock_says(
    redis_server: RedisServer, prefix: str, skew: float
) -> None:
    """Leases and expiry run on the server's clock; so do etas: a producer (or a worker
    retrying) whose clock is an hour off still delays a job by what it asked, not by an
    hour more or not at all."""
    producer = RedisBroker(redis_server.url, prefix=prefix, clock=_OffClock(skew))
    worker = RedisBroker(redis_server.url, prefix=prefix)
    clock = producer._clock
    producer.enqueue([env(eta=clock.time() + 0.4)])
    assert fetch(worker) == []  # not due yet, even on a clock an hour behind
    time.sleep(0.6)
    [d] = fetch(worker)
    # A retry from a worker whose clock is off: the same.
    off = RedisBroker(redis_server.url, prefix=prefix, clock=_OffClock(skew))
    again = Envelope(d.id, d.queue, d.payload, eta=off._clock.time() + 0.4)
    assert off.finish([Finish(d, JobStatus.SCHEDULED, retry=again)]) == [True]
    assert fetch(worker) == []
    time.sleep(0.6)
    assert [r.id for r in fetch(worker)] == [d.id]
    for b in (producer, worker, off):
        b.close()


def test_one_finish_call_over_queues_and_priorities_acks_each_entry_and_fences_each_job(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    """The finish script acks, deletes, un-indexes and indexes per stream and per index for
    the whole call: each job still ends on its own terms."""
    jobs = [env(queue, priority=prio) for queue in ("fa", "fb") for prio in (0, 5) for _ in "ab"]
    broker.enqueue(jobs)
    got = fetch(broker, count=20, queues=("fa", "fb"))
    assert len(got) == 8
    stale = got[0]
    broker.release([stale])  # its token is now stale
    [again] = fetch(broker, "c2", queues=(stale.queue,), count=1)
    assert again.id == stale.id
    rest = got[1:]
    retry = rest[0]
    outcomes = [Finish(stale, JobStatus.SUCCEEDED, b"stale")]
    outcomes += [
        Finish(
            d,
            JobStatus.FAILED if i % 2 else JobStatus.SUCCEEDED,
            b"r" + d.id.encode(),
            reason="boom" if i % 2 else "",
        )
        for i, d in enumerate(rest[1:])
    ]
    outcomes += [
        Finish(retry, JobStatus.SCHEDULED, b"", retry=Envelope(retry.id, "fc", b"again")),
        Finish(rest[1], JobStatus.SUCCEEDED, b"repeat"),
    ]  # a repeat: the truth
    assert broker.finish(outcomes) == [False] + [True] * (len(outcomes) - 1)
    records = {r.id: r for r in broker.get([d.id for d in got]) if r is not None}
    assert records[stale.id].status == JobStatus.RUNNING  # the live delivery still holds it
    for i, d in enumerate(rest[1:]):
        assert records[d.id].status == (JobStatus.FAILED if i % 2 else JobStatus.SUCCEEDED)
        assert records[d.id].result == b"r" + d.id.encode()  # the first finish stands
    assert records[retry.id].status == JobStatus.QUEUED and records[retry.id].queue == "fc"
    for queue in ("fa", "fb"):
        for prio in (0, 5):
            stream = "{" + prefix + "}:q:" + queue + ":s" + str(prio)
            live = int(again.queue == queue and again.priority == prio)
            assert raw.xlen(stream) == live  # every finished entry deleted
            assert raw.xpending(stream, "conveyor")["pending"] == live  # and acked
        running = raw.zrange("{" + prefix + "}:q:" + queue + ":running", 0, -1)
        assert running == ([stale.id.encode()] if stale.queue == queue else [])
    ended = {d.id for d in rest[1:]}
    listed = {
        m.decode()
        for q in ("fa", "fb")
        for status in ("succeeded", "failed")
        for m in raw.zrange("{" + prefix + "}:q:" + q + ":" + status, 0, -1)
    }
    assert listed == ended
    assert raw.sismember("{" + prefix + "}:queues", "fc")
    assert [d.id for d in fetch(broker, queues=("fc",))] == [retry.id]
    assert broker.finish([Finish(again, JobStatus.SUCCEEDED, b"live")]) == [True]


def test_one_finish_call_reads_each_outcomes_status_ttl_reason_and_retry(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    """finish.lua reads an outcome's status, TTL and queue as one shape per call, and 4, 5
    or 10 values per outcome by that shape: outcomes of every shape, mixed in one call,
    each end as sent."""
    jobs = [env("fa") for _ in range(4)] + [env("fb") for _ in range(2)]
    broker.enqueue(jobs)
    got = {d.id: d for d in fetch(broker, count=10, queues=("fa", "fb"))}
    d = [got[j.id] for j in jobs]
    outcomes = [
        Finish(d[0], JobStatus.SUCCEEDED, b"r0", result_ttl=100.0),
        Finish(d[1], JobStatus.FAILED, b"", result_ttl=200.0, reason="boom 1"),
        Finish(
            d[2], JobStatus.SCHEDULED, b"", reason="later", retry=Envelope(d[2].id, "fb", b"p2")
        ),
        Finish(d[3], JobStatus.SUCCEEDED, b"r3", result_ttl=100.0),
        Finish(d[4], JobStatus.DEAD, b"", result_ttl=300.0, reason="x y"),
        Finish(d[5], JobStatus.SUCCEEDED, b"", result_ttl=200.0),
    ]
    assert broker.finish(outcomes) == [True] * 6
    records = {r.id: r for r in broker.get([j.id for j in jobs]) if r is not None}
    ends = [
        (JobStatus.SUCCEEDED, "", 100),
        (JobStatus.FAILED, "boom 1", 200),
        (JobStatus.QUEUED, "later", None),
        (JobStatus.SUCCEEDED, "", 100),
        (JobStatus.DEAD, "x y", 300),
        (JobStatus.SUCCEEDED, "", 200),
    ]
    for job, (status, reason, ttl) in zip(jobs, ends, strict=True):
        record = records[job.id]
        assert (record.status, record.reason) == (status, reason)
        key = "{" + prefix + "}:job:" + job.id
        if ttl is None:
            assert raw.pttl(key) == -1
            continue
        assert (ttl + 50) * 1000 < raw.pttl(key) <= (ttl + 60) * 1000  # + the grace
        updated, expires = (int(v) for v in raw.hmget(key, "updated_at", "expires_at"))
        assert expires - updated == ttl * 1000
    assert records[jobs[0].id].result == b"r0" and records[jobs[3].id].result == b"r3"
    assert [x.id for x in fetch(broker, queues=("fb",))] == [jobs[2].id]


def test_an_ending_without_reason_writes_none_unless_an_earlier_one_must_be_cleared(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    """A job ended with no reason gets no reason field (a field not written reads as empty),
    unless it was retried: its retry's reason is cleared."""
    first, retried = env(), env()
    broker.enqueue([first, retried])
    a, b = fetch(broker, count=2)
    retry = Envelope(b.id, "default", b"again")
    assert broker.finish(
        [
            Finish(a, JobStatus.SUCCEEDED, b"r"),
            Finish(b, JobStatus.SCHEDULED, b"", reason="boom", retry=retry),
        ]
    ) == [True, True]
    assert broker.get([b.id])[0].reason == "boom"  # type: ignore[union-attr]
    [b2] = fetch(broker)
    assert broker.finish([Finish(b2, JobStatus.SUCCEEDED, b"r2")]) == [True]
    assert not raw.hexists("{" + prefix + "}:job:" + first.id, "reason")
    assert raw.hget("{" + prefix + "}:job:" + retried.id, "reason") == b""
    assert [r.reason for r in broker.get([first.id, retried.id])] == ["", ""]  # type: ignore[union-attr]


def test_a_queue_is_listed_once_its_first_job_is_written_whichever_way(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    """enqueue lists a queue only when its job did not go into a stream that exists (a stream
    exists only for a listed queue): a scheduled job, a first job, a stream a worker's group
    creation did not make."""
    queues = "{" + prefix + "}:queues"
    broker.enqueue([env("later", eta=time.time() + 60)])
    assert raw.smembers(queues) == {b"later"}
    fetch(broker, queues=("first",))  # a worker on a queue nobody wrote to yet
    broker.enqueue([env("first")])
    broker.enqueue([env("first")])
    assert raw.smembers(queues) == {b"later", b"first"}


def test_async_enqueue_reloads_scripts_the_server_lost_and_reconnects(
    fresh_redis_server: RedisServer, prefix: str
) -> None:
    server = fresh_redis_server
    b = RedisBroker(server.url, prefix=prefix)
    admin = server.client()

    async def main() -> None:
        assert await b.enqueue_async([e := env()]) == [e.id]
        admin.script_flush()  # as after a restart or failover
        assert await b.enqueue_async([e := env()]) == [e.id]  # NOSCRIPT: loaded, sent again
        admin.script_flush()
        batch = [env() for _ in range(ENQUEUE_CHUNK + 1)]  # several calls in one MULTI
        assert await b.enqueue_async(batch) == [x.id for x in batch]
        assert admin.xlen("{" + prefix + "}:q:default:s0") == ENQUEUE_CHUNK + 3  # each once
        server.restart(empty=True)  # the pooled connection is dead, the scripts gone
        assert await b.enqueue_async([e := env()]) == [e.id]  # reconnected, loaded, sent
        assert admin.xlen("{" + prefix + "}:q:default:s0") == 1

    asyncio.run(main())
    b.close()


# -- reclaim -----------------------------------------------------------------------------


def _race(brokers: list[RedisBroker], total: int, lease: float) -> list[Delivery]:
    got: list[Delivery] = []
    mutex = threading.Lock()
    deadline = time.monotonic() + 10

    def reclaimer(n: int) -> None:
        while time.monotonic() < deadline:
            with mutex:
                if len(got) >= total:
                    return
            batch = fetch(brokers[n], f"reclaimer-{n}", count=3, lease=lease, block=0.05)
            with mutex:
                got.extend(batch)

    threads = [threading.Thread(target=reclaimer, args=(n,)) for n in range(len(brokers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


@pytest.fixture
def eight(redis_server: RedisServer, prefix: str) -> Iterator[list[RedisBroker]]:
    brokers = [RedisBroker(redis_server.url, prefix=prefix, sweep_idle=0.2) for _ in range(8)]
    yield brokers
    for b in brokers:
        b.close()


def test_expired_leases_go_to_exactly_one_of_eight_reclaimers(
    eight: list[RedisBroker],
) -> None:
    envs = [env() for _ in range(40)]
    eight[0].enqueue(envs)
    assert len(fetch(eight[0], "dies", count=40, lease=0.2)) == 40
    time.sleep(0.3)
    got = _race(eight, 40, lease=60)
    assert Counter(d.id for d in got) == Counter(e.id for e in envs)
    assert {d.deliveries for d in got} == {2}


def test_xautoclaim_sweep_hands_orphans_to_exactly_one_of_eight(
    eight: list[RedisBroker], raw: redis.Redis, prefix: str
) -> None:
    envs = [env() for _ in range(30)]
    eight[0].enqueue(envs)
    # A reader that died between XREADGROUP and its bookkeeping: pending, no lease.
    raw.xreadgroup("conveyor", "ghost", {"{" + prefix + "}:q:default:s0": ">"}, count=30)
    assert fetch(eight[0], count=30) == []
    time.sleep(0.3)
    got = _race(eight, 30, lease=60)
    assert Counter(d.id for d in got) == Counter(e.id for e in envs)
    pending = raw.xpending("{" + prefix + "}:q:default:s0", "conveyor")
    assert pending["pending"] == 30
    assert b"ghost" not in {c["name"] for c in pending["consumers"]}


def test_queued_jobs_are_counted_listed_and_purged_from_the_streams(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    low = [env(priority=0) for _ in range(3)]
    high = [env(priority=7) for _ in range(2)]
    broker.enqueue([*low, *high])
    running = fetch(broker, count=2)  # the two of priority 7
    assert {d.id for d in running} == {e.id for e in high}
    raw.xadd("{" + prefix + "}:q:default:s0", {"some": "thing"})  # counts as queued, raw
    (stats,) = broker.stats()
    assert (stats.queued, stats.running) == (4, 2)
    listed = broker.entries(JobStatus.QUEUED, "default", 10)
    # As fetch hands them out; the entry written by hand has no job record until fetched.
    assert [e.id for e in listed] == [e.id for e in low]
    assert {e.payload for e in listed} >= {e.payload for e in low}
    assert [e.payload for e in broker.entries(JobStatus.RUNNING, None, 10)] != []
    assert broker.purge("default") == 4
    (stats,) = broker.stats()
    assert (stats.queued, stats.running) == (0, 2)
    assert broker.get([e.id for e in low]) == [None, None, None]
    assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r") for d in running]) == [True] * 2


def test_the_payload_moves_from_the_entry_to_the_hash_when_the_job_outlives_its_entry(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    jobs = [env() for _ in range(4)]
    broker.enqueue(jobs)
    assert raw.hget("{" + prefix + "}:job:" + jobs[0].id, "payload") is None  # in the entry
    assert [broker.payload(e.id) for e in jobs] == [e.payload for e in jobs]
    d0, d1, d2, d3 = fetch(broker, count=4)
    broker.finish(
        [
            Finish(d0, JobStatus.SUCCEEDED, b"r"),
            Finish(d1, JobStatus.FAILED, None),
            Finish(d2, JobStatus.DEAD, None),
        ]
    )
    assert broker.release([d3]) == [True]
    # A succeeded job keeps its result only; the others keep their payload, in the hash.
    assert [broker.payload(e.id) for e in jobs] == [None, *(e.payload for e in jobs[1:])]
    # Its hash keeps the id of the entry that went (finish writes no field nobody reads):
    # an ended job is not looked for in the stream.
    assert raw.hget("{" + prefix + "}:job:" + jobs[0].id, "sid")
    assert [e.payload for e in broker.entries(JobStatus.SUCCEEDED, None, 10)] == [b""]
    assert [d.payload for d in fetch(broker)] == [jobs[3].payload]
    assert broker.requeue([(jobs[1].id, jobs[1].payload)]) == [jobs[1].id]
    assert [d.payload for d in fetch(broker)] == [jobs[1].payload]


def test_a_first_delivery_leases_its_job_in_one_write_and_drops_an_entry_with_no_record(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # A new entry carrying its payload is a queued job's first delivery: fetch writes the
    # lease without reading the hash first, and the write's count of new fields tells it
    # when there was no record (gone by hand or evicted): the entry is dropped and what
    # was in the hash (here a field of a waiter, no status) is left as it was.
    gone, kept = env(), env()
    broker.enqueue([gone, kept])
    key = "{" + prefix + "}:job:"
    raw.delete(key + gone.id)
    raw.hset(key + gone.id, "waited", "1")
    [d] = fetch(broker)
    assert (d.id, d.payload, d.deliveries) == (kept.id, kept.payload, 1)
    assert raw.hgetall(key + gone.id) == {b"waited": b"1"}
    assert raw.xlen("{" + prefix + "}:q:default:s0") == 1  # its entry went
    fields = raw.hmget(key + kept.id, "status", "token", "deliveries", "consumer")
    assert fields == [b"running", d.token.encode(), b"1", b"c1"]
    assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r")]) == [True]


def test_an_entry_the_sweep_takes_back_counts_as_another_delivery(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    # The sweep's entries were delivered before: their count is read, not taken as a first.
    b = RedisBroker(redis_server.url, prefix=prefix, sweep_idle=0.1)
    b.enqueue([e := env()])
    [first] = fetch(b, "dies")
    raw.zrem("{" + prefix + "}:q:default:running", e.id)  # its lease lost, entry pending
    time.sleep(0.25)
    [again] = fetch(b, "sweeper")
    assert (again.id, again.payload, again.deliveries) == (e.id, e.payload, 2)
    assert b.finish([Finish(first, JobStatus.SUCCEEDED, b"late")]) == [False]
    assert b.finish([Finish(again, JobStatus.SUCCEEDED, b"r")]) == [True]
    b.close()


def test_an_entry_read_again_after_its_group_was_set_back_goes_out_with_a_new_lease(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # An operator set the group back (XGROUP SETID): a running job's entry is read as new.
    # It goes out again under a new token (its count starts anew); the old one is fenced.
    broker.enqueue([e := env()])
    [old] = fetch(broker, "c1")
    raw.xgroup_setid("{" + prefix + "}:q:default:s0", "conveyor", "0")
    [new] = fetch(broker, "c2")
    assert (new.id, new.payload, new.deliveries) == (e.id, e.payload, 1)
    assert new.token != old.token
    assert broker.finish([Finish(old, JobStatus.SUCCEEDED, b"old")]) == [False]
    assert broker.finish([Finish(new, JobStatus.SUCCEEDED, b"new")]) == [True]


def test_a_record_lost_and_its_id_enqueued_again_before_its_entry_is_read_goes_out_twice(
    redis_server: RedisServer, raw: redis.Redis, prefix: str
) -> None:
    # The corner a first delivery's lease without a read leaves (fetch.lua deliver): a
    # queued job's record gone by hand or evicted, and its id enqueued again (a new record,
    # a new entry) before the old entry is read. The old entry finds a record that never
    # had a lease, so it goes out, with the old payload; the new one goes out as well (its
    # lease replaces the first, which is fenced). The old entry stays pending until the
    # sweep drops it (its job's record names the other entry).
    b = RedisBroker(redis_server.url, prefix=prefix, sweep_idle=0.1)
    stream = "{" + prefix + "}:q:default:s0"
    b.enqueue([e := env()])
    raw.delete("{" + prefix + "}:job:" + e.id)
    b.enqueue([again := Envelope(e.id, "default", b"enqueued again")])
    stale, new = fetch(b)
    assert (stale.id, stale.payload, stale.deliveries) == (e.id, e.payload, 1)
    assert (new.id, new.payload, new.deliveries) == (e.id, again.payload, 1)
    assert b.finish([Finish(stale, JobStatus.SUCCEEDED, b"stale")]) == [False]
    assert b.finish([Finish(new, JobStatus.SUCCEEDED, b"r")]) == [True]
    assert raw.xlen(stream) == 1  # the old entry, pending
    time.sleep(0.25)
    assert fetch(b, "sweeper") == []
    assert raw.xlen(stream) == 0
    b.close()


def test_jobs_written_by_the_previous_version_are_fetched_finished_and_read(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    """The records as the version before this one wrote them (upgrade in place): a queued
    job (its payload in the entry), one it leased (token and count in the hash, its entry
    pending, its lease in the running index) and one it reclaimed (the payload moved into
    the hash, an entry without it, one delivery counted); and a queued job as enqueue wrote
    it before 6916008 (a zero count and an empty unique key in the hash)."""
    tag = "{" + prefix + "}"
    stream, job = tag + ":q:default:s0", tag + ":job:"
    raw.xgroup_create(stream, "conveyor", "0", mkstream=True)
    raw.sadd(tag + ":queues", "default")
    queued, leased, reclaimed, older = env(), env(), env(), env()
    now = int(time.time() * 1000)

    def enter(e: Envelope, fields: dict[Any, Any], payload: bytes | None) -> bytes:
        entry: dict[str | bytes, str | bytes] = {"job": e.id}
        if payload is not None:
            entry["payload"] = payload
        sid = raw.xadd(stream, entry)  # type: ignore[arg-type]
        assert isinstance(sid, bytes)
        raw.hset(job + e.id, mapping={"status": "queued", "sid": sid, "queue": "default",
                                      "priority": 0, "updated_at": now, **fields})  # fmt: skip
        return sid

    enter(leased, {}, leased.payload)
    raw.xreadgroup("conveyor", "old-worker", {stream: ">"}, count=1)
    raw.hset(job + leased.id, mapping={"status": "running", "token": "t-old", "deliveries": 1,
                                       "consumer": "old-worker", "updated_at": now})  # fmt: skip
    raw.zadd(tag + ":q:default:running", {leased.id: now + 60_000})
    enter(reclaimed, {"payload": reclaimed.payload, "deliveries": 1, "eta": ""}, None)
    enter(queued, {}, queued.payload)
    enter(older, {"deliveries": 0, "key": ""}, older.payload)
    got = {d.id: d for d in fetch(broker)}
    assert {i: (d.payload, d.deliveries) for i, d in got.items()} == {
        reclaimed.id: (reclaimed.payload, 2),
        queued.id: (queued.payload, 1),
        older.id: (older.payload, 1),
    }
    held = Delivery(leased.id, "default", leased.payload, "t-old", 1)
    outcomes = [Finish(d, JobStatus.SUCCEEDED, d.id.encode()) for d in [held, *got.values()]]
    assert broker.finish(outcomes) == [True, True, True, True]
    records = broker.get([leased.id, reclaimed.id, queued.id, older.id])
    assert [(r.status, r.result, r.deliveries) for r in records if r] == [
        (JobStatus.SUCCEEDED, leased.id.encode(), 1),
        (JobStatus.SUCCEEDED, reclaimed.id.encode(), 2),
        (JobStatus.SUCCEEDED, queued.id.encode(), 1),
        (JobStatus.SUCCEEDED, older.id.encode(), 1),
    ]
    assert raw.xlen(stream) == 0
    assert raw.zcard(tag + ":q:default:running") == 0


def test_only_a_job_somebody_waits_for_pushes_a_completion_signal(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    alone, watched = env(), env()
    broker.enqueue([alone, watched])
    d_alone, d_watched = fetch(broker, count=2)
    waiter = threading.Thread(target=broker.wait, args=(watched.id, 30))
    waiter.start()
    deadline = time.monotonic() + 30
    while raw.hget("{" + prefix + "}:job:" + watched.id, "waited") is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    broker.finish(
        [Finish(d_alone, JobStatus.SUCCEEDED, b"a"), Finish(d_watched, JobStatus.SUCCEEDED, b"w")]
    )
    waiter.join(30)
    assert not waiter.is_alive()
    done = "{" + prefix + "}:done:"
    assert (raw.exists(done + alone.id), raw.exists(done + watched.id)) == (0, 1)
    record = broker.wait(alone.id, 1)  # ended before anyone waited: in the record
    assert record is not None and record.result == b"a"


def test_a_fetch_of_thousands_leases_every_delivery(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # The leases go into the running index in slices: Lua's unpack takes ~8,000 values.
    n = 4100
    broker.enqueue([env() for _ in range(n)])
    assert len(fetch(broker, count=n)) == n
    assert raw.zcard("{" + prefix + "}:q:default:running") == n


def test_a_batch_with_dependencies_of_thousands_is_one_call_that_works(
    broker: RedisBroker,
) -> None:
    first = env()
    rest = [env(depends_on=(first.id,)) for _ in range(4100)]
    assert broker.enqueue([first, *rest]) == [e.id for e in [first, *rest]]
    (stats,) = broker.stats()
    assert (stats.queued, stats.scheduled) == (1, 4100)


def test_a_succeeded_job_is_not_requeued_and_a_job_without_payload_goes_out_empty(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    e = env()
    broker.enqueue([e])
    [d] = fetch(broker)
    assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r")]) == [True]
    assert broker.requeue([(e.id, e.payload)]) == [None]  # it kept its result only
    assert fetch(broker) == []
    # A job whose payload is nowhere (written by hand) does not break the reply it is in.
    bare, good = env(), env()
    broker.enqueue([bare, good])
    raw.xadd("{" + prefix + "}:q:default:s0", {"job": bare.id})  # a second, bare entry
    raw.hset(
        "{" + prefix + "}:job:" + bare.id,
        "sid",
        raw.xrevrange("{" + prefix + "}:q:default:s0", count=1)[0][0],
    )
    got = {d.id: d.payload for d in fetch(broker)}
    assert got == {bare.id: b"", good.id: good.payload}


def test_payload_of_a_job_whose_entry_goes_during_the_read(broker: RedisBroker) -> None:
    # The entry goes (handed back) between the hash read and the entry read: read again.
    e = env()
    broker.enqueue([e])
    [d] = fetch(broker)
    original = broker._payloads

    def entry_goes_first(rows: list[list[object]]) -> list[bytes | None]:
        assert broker.release([d]) == [True]  # the payload moves into the hash
        return original(rows)

    broker._payloads = entry_goes_first  # type: ignore[method-assign,assignment]
    assert broker.payload(e.id) == e.payload


def test_a_fetch_over_several_queues_gives_each_delivery_its_own_token(
    broker: RedisBroker,
) -> None:
    broker.enqueue([env("a"), env("b"), env("a"), env("b")])
    got = fetch(broker, count=4, queues=("a", "b"))
    assert len(got) == 4
    assert len({d.token for d in got}) == 4


def test_purge_works_through_big_queues_in_chunks(broker: RedisBroker) -> None:
    broker.enqueue([env() for _ in range(2500)])
    assert broker.purge("default") == 2500
    assert fetch(broker) == []


# -- time: the server's clock, not the clients' --------------------------------------------


class Skewed(SystemClock):
    """A real clock that is ``offset`` seconds off, as on a host without NTP."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset


def test_clients_with_skewed_clocks_never_both_hold_a_lock(
    redis_server: RedisServer, prefix: str
) -> None:
    client = redis_server.client()
    on_time = RedisKV(client, prefix=prefix, clock=Skewed(0))
    ahead = RedisKV(client, prefix=prefix, clock=Skewed(10))
    behind = RedisKV(client, prefix=prefix, clock=Skewed(-10))
    assert on_time.lock_acquire("x", "a", 5) == 1
    assert ahead.lock_acquire("x", "b", 5) is None  # its clock says a's ttl ran out
    assert ahead.lock_acquire("y", "b", 5) == 1
    assert behind.lock_acquire("y", "c", 5) is None
    assert not behind.lock_extend("y", "c", 5)
    assert behind.set("v", b"1", ttl=5)
    for kv in (on_time, ahead, behind):  # all read the same expiry
        left = kv.ttl("v")
        assert left is not None and 4 < left <= 5
        assert kv.get("v") == b"1"
    assert not ahead.set("v", b"2", nx=True)
    client.close()


def test_a_worker_whose_clock_runs_ahead_does_not_reclaim_a_live_lease(
    redis_server: RedisServer, prefix: str
) -> None:
    on_time = RedisBroker(redis_server.url, prefix=prefix, clock=Skewed(0))
    ahead = RedisBroker(redis_server.url, prefix=prefix, clock=Skewed(10))
    try:
        on_time.enqueue([e := env()])
        [d] = fetch(on_time, "w1", lease=5)
        assert fetch(ahead, "w2", lease=5) == []  # the lease is still live on the server
        assert on_time.renew([d], 5)[0].value == "ok"
        assert on_time.finish([Finish(d, JobStatus.SUCCEEDED, b"r", result_ttl=5)]) == [True]
        # The result's 5 s are the server's: a reader 10 s ahead still sees it.
        [record] = ahead.get([e.id])
        assert record is not None and record.result == b"r"
        assert ahead.wait(e.id, 1) is not None
        on_time.heartbeat(
            WorkerInfo(
                id="w1",
                host="h",
                pid=1,
                queues=["default"],
                concurrency=1,
                pool="threads",
                started_at=0.0,
            ),
            5,
        )
        assert [w.id for w in ahead.workers()] == ["w1"]
    finally:
        on_time.close()
        ahead.close()


# -- the key-value store -----------------------------------------------------------------


def test_store_keys_cannot_reach_a_lock_or_its_fence(broker: RedisBroker) -> None:
    kv = broker.kv
    fence = kv.lock_acquire("x", "holder", 30)
    assert fence is not None
    for key in ("lock:x", "x", "fence:x", "lock:x:fence", "lock:x}:fence", "x:fence"):
        assert kv.get(key) is None, key
        assert not kv.delete(key), key
        assert kv.set(key, b"intruder"), key
        assert kv.delete(key), key
        assert kv.incr(key) == 1, key
        assert kv.update(key, lambda old: None) is None, key
    assert kv.lock_acquire("x", "other", 30) is None  # still held by "holder"
    assert kv.lock_extend("x", "holder", 30)
    assert kv.lock_release("x", "holder")
    assert kv.lock_acquire("x", "other", 30) == fence + 1  # the fence went on counting
    # And the other way round: a lock does not touch the value of the same name.
    kv.set("y", b"value")
    assert kv.lock_acquire("y", "t", 30) is not None
    assert kv.lock_release("y", "t")
    assert kv.get("y") == b"value"


@pytest.mark.parametrize("retries", [0, 3])
def test_update_makes_retries_plus_one_attempts(broker: RedisBroker, retries: int) -> None:
    kv = broker.kv
    calls: list[bytes | None] = []

    def meddle(old: bytes | None) -> bytes:
        calls.append(old)
        kv.set("hot", str(len(calls)).encode())  # another writer, every time
        return b"mine"

    with pytest.raises(TransactionConflict):
        kv.update("hot", meddle, retries=retries)
    assert len(calls) == retries + 1
    assert kv.get("hot") == str(retries + 1).encode()


@pytest.mark.parametrize("value", [b"abc", b"1.5", b"1e3", b"0x10", b""])
def test_incr_of_a_value_that_is_not_an_integer_is_a_validation_error(
    broker: RedisBroker, value: bytes
) -> None:
    broker.kv.set("n", value)
    with pytest.raises(ValidationError, match="not an integer") as info:
        broker.kv.incr("n")
    assert not isinstance(info.value, InvalidName)  # the key is fine; its value is not
    assert broker.kv.get("n") == value


# -- consumer names ----------------------------------------------------------------------


def consumers(raw: redis.Redis, prefix: str, queue: str, priority: int = 0) -> dict[str, int]:
    """Consumer name -> pending count in a stream's group."""
    stream = "{" + prefix + "}:q:" + queue + ":s" + str(priority)
    return {c["name"].decode(): c["pending"] for c in raw.xinfo_consumers(stream, "conveyor")}


def test_forget_worker_drops_its_consumer_only_where_nothing_is_pending(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    broker.enqueue([env(), env("other"), env("other", priority=5), env("other")])
    [held] = fetch(broker, "w1")
    done = fetch(broker, "w1", count=2, queues=("other",))
    broker.finish([Finish(d, JobStatus.SUCCEEDED, b"") for d in done])
    [peer] = fetch(broker, "w2", queues=("other",))
    assert consumers(raw, prefix, "other", 5) == {"w1": 0}
    assert consumers(raw, prefix, "other") == {"w1": 0, "w2": 1}
    broker.forget_worker("w1")
    assert consumers(raw, prefix, "default") == {"w1": 1}  # still holds a job: kept
    assert consumers(raw, prefix, "other", 5) == {}
    assert consumers(raw, prefix, "other") == {"w2": 1}
    assert broker.renew([held], 60)[0].value == "ok"
    assert broker.finish([Finish(held, JobStatus.SUCCEEDED, b"")]) == [True]
    broker.forget_worker("w1")
    broker.forget_worker("never-seen")
    assert consumers(raw, prefix, "default") == {}
    assert consumers(raw, prefix, "other") == {"w2": 1}
    assert broker.finish([Finish(peer, JobStatus.SUCCEEDED, b"")]) == [True]


def test_fetch_reaps_consumers_idle_with_nothing_pending(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    broker.reap_every, broker.reap_idle = 0.1, 0.1
    broker.enqueue([env(), env()])
    [done] = fetch(broker, "stopped", count=1)
    broker.finish([Finish(done, JobStatus.SUCCEEDED, b"")])
    [held] = fetch(broker, "killed", count=1)  # died holding a job: its entry must stay pending
    assert consumers(raw, prefix, "default") == {"stopped": 0, "killed": 1}
    time.sleep(0.2)
    assert fetch(broker, "live") == []
    assert consumers(raw, prefix, "default") == {"killed": 1}
    assert broker.finish([Finish(held, JobStatus.SUCCEEDED, b"")]) == [True]


def test_fetch_finds_a_priority_level_that_came_into_use_or_went_since_its_last_call(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    broker.enqueue([first := env()])
    assert [d.id for d in fetch(broker)] == [first.id]  # the broker now knows level 0 only
    broker.enqueue([high := env(priority=7)])
    assert [d.id for d in fetch(broker)] == [high.id]
    raw.delete("{" + prefix + "}:q:default:s0")  # a level it knew is gone (by hand)
    assert fetch(broker) == []
    broker.enqueue([again := env()])
    assert [d.id for d in fetch(broker)] == [again.id]


def test_a_blocked_fetch_wakes_for_a_job_on_a_level_never_used_before(
    broker: RedisBroker, redis_server: RedisServer, prefix: str
) -> None:
    broker.enqueue([env()])
    fetch(broker)  # level 0 known; the others do not exist
    got: list[Delivery] = []
    t = threading.Thread(target=lambda: got.extend(fetch(broker, block=30.0)))
    t.start()
    time.sleep(0.2)  # let it block (if it has not yet, it finds the job at once: same result)
    producer = RedisBroker(redis_server.url, prefix=prefix)
    producer.enqueue([e := env(priority=3)])
    t.join(timeout=10)  # far below the 30 s block: it was woken, not timed out
    assert not t.is_alive()
    assert [d.id for d in got] == [e.id]
    producer.close()


# -- restarts, errors, ACL ---------------------------------------------------------------


def test_restart_empty_recreates_the_group_loudly_and_goes_on(
    fresh_redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = fresh_redis_server
    b = RedisBroker(server.url, prefix=prefix)
    b.enqueue([env()])
    assert len(fetch(b)) == 1
    server.restart(empty=True)
    # A stream written without its group (by hand, or by a peer after the wipe).
    server.client().xadd("{" + prefix + "}:q:default:s0", {"payload": b"orphan"})
    with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
        [d] = fetch(b)  # reconnects, reloads scripts (NOSCRIPT), recreates the group
    assert d.payload == b"orphan"
    assert "consumer group" in caplog.text
    b.enqueue([e := env()])
    assert [x.id for x in fetch(b)] == [e.id]
    server.restart(empty=True)
    # A batch of several script calls in one MULTI: NOSCRIPT, loaded, sent again, once.
    batch = [env() for _ in range(ENQUEUE_CHUNK + 1)]
    assert b.enqueue(batch) == [x.id for x in batch]
    assert server.client().xlen("{" + prefix + "}:q:default:s0") == len(batch)
    b.close()


def test_errors_are_conveyor_errors(fresh_redis_server: RedisServer, prefix: str) -> None:
    b = RedisBroker(fresh_redis_server.url, prefix=prefix)
    fresh_redis_server.kill()
    with pytest.raises(BrokerUnavailable):
        b.enqueue([env()])
    with pytest.raises(BrokerUnavailable):
        b.kv.get("k")
    fresh_redis_server.start()
    assert b.enqueue([e := env()]) == [e.id]  # back without a new broker
    b.close()


def test_least_privilege_acl_user_with_password_in_the_url(tmp_path: Path, prefix: str) -> None:
    server = RedisServer(tmp_path / "acl")
    try:
        server.client().acl_setuser(
            "app",
            enabled=True,
            passwords=["+s3cret"],
            keys=["{" + prefix + "}:*", "{" + prefix + ":*"],
            commands=["+@all", "-@dangerous", "-keys", "-config", "-flushall", "-flushdb"],
        )
        b = RedisBroker(f"redis://app:s3cret@127.0.0.1:{server.port}/0", prefix=prefix)
        b.enqueue([e := env(key="u"), env(eta=time.time() + 60)])
        [d] = fetch(b)
        assert b.renew([d], 60)[0].value == "ok"
        assert b.finish([Finish(d, JobStatus.SUCCEEDED, b"ok")]) == [True]
        assert b.wait(e.id, 1) is not None
        assert b.stats() and b.kv.lock_acquire("l", "t", 5) == 1
        b.close()
        with pytest.raises(BrokerError):  # a key outside the prefix is refused, translated
            RedisBroker(server.url.replace("//", "//app:s3cret@"), prefix="other").enqueue([env()])
    finally:
        server.stop()


# -- asyncio -----------------------------------------------------------------------------


def test_async_enqueue_and_wait(broker: RedisBroker) -> None:
    async def main() -> tuple[list[str], float, bytes | None]:
        e = env()
        ids = await broker.enqueue_async([e])

        def work() -> None:
            time.sleep(0.1)
            [d] = fetch(broker)
            broker.finish([Finish(d, JobStatus.SUCCEEDED, b"async result")])

        worker = threading.Thread(target=work)
        worker.start()
        waited = asyncio.create_task(broker.wait_async(e.id, 5))
        ticks = 0
        while not waited.done():  # the loop stays free while waiting
            ticks += 1
            await asyncio.sleep(0.01)
        record = await waited
        worker.join()
        return ids, ticks, record.result if record else None

    ids, ticks, result = asyncio.run(main())
    assert len(ids) == 1
    assert ticks >= 5
    assert result == b"async result"


# -- the event log ---------------------------------------------------------------------------


def _event_entries(raw: redis.Redis, prefix: str) -> list[tuple[str, bytes]]:
    return [(i.decode(), f[b"e"]) for i, f in raw.xrange("{" + prefix + "}:events")]


def test_the_events_of_one_call_share_entries_numbered_by_their_last_event(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    jobs = [env() for _ in range(100)]
    broker.enqueue(jobs, [b"enqueued %d" % i for i in range(100)])
    broker.publish([b"alone"])
    entries = _event_entries(raw, prefix)
    assert [i for i, _ in entries] == ["64-0", "100-0", "101-0"]  # 64 to an entry at most
    assert entries[2][1] == b"5:alone"
    assert raw.get("{" + prefix + "}:events:n") == b"101"
    assert broker.events_tail() == "101"
    got = broker.read_events("60", 0.0, 10)  # from the middle of the first entry
    assert got == [(str(n), b"enqueued %d" % (n - 1)) for n in range(61, 71)]
    assert all(
        redis.crc.key_slot(k.encode()) == redis.crc.key_slot(f"{{{prefix}}}:queues".encode())
        for k in ("{" + prefix + "}:events", "{" + prefix + "}:events:n")
    )


def test_a_lost_event_counter_is_caught_up_with_the_stream(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    broker.publish([b"a", b"b", b"c"])
    raw.delete("{" + prefix + "}:events:n")  # by hand: the stream's ids are ahead of it
    broker.enqueue([env()], [b"d"])
    broker.publish([b"e"])
    assert [e for _, e in broker.read_events(None, 0.0, 10)] == [b"a", b"b", b"c", b"d", b"e"]
    assert [i for i, _ in _event_entries(raw, prefix)] == ["3-0", "4-0", "5-0"]


def test_an_event_log_that_cannot_be_written_costs_no_job(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    raw.set("{" + prefix + "}:events", "not a stream")  # by hand
    job = env()
    assert broker.enqueue([job], [b"enqueued"]) == [job.id]
    [d] = fetch(broker)
    assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r", event=b"done")], [b"s"]) == [True]
    assert broker.get([job.id])[0].status is JobStatus.SUCCEEDED  # type: ignore[union-attr]


def _spoil(raw: redis.Redis, key: str, kind: str) -> None:
    """Make ``key`` what Conveyor never writes there: text, or a list (by hand)."""
    raw.delete(key)
    if kind == "text":
        raw.set(key, "abc")
    else:
        raw.rpush(key, "x")


@pytest.mark.parametrize("kind", ["text", "list"])
def test_an_event_counter_written_by_hand_costs_no_job(
    redis_server: RedisServer, raw: redis.Redis, prefix: str, kind: str
) -> None:
    # Its INCRBY failed after the job was written (a script is not rolled back): the caller
    # was told an enqueue failed that had queued the job, and one that sent it again under
    # a new id queued it twice. The counter is taken as lost: numbered on from the log.
    from conveyor import Conveyor
    from conveyor.testing import drain

    counter = "{" + prefix + "}:events:n"
    with Conveyor(redis_server.url, prefix=prefix) as app:

        @app.task(name="add")
        def add(a: int, b: int) -> int:
            return a + b

        add.delay(1, 2)  # its queue's first job: makes the stream
        _spoil(raw, counter, kind)
        lone = add.delay(3, 4)  # enqueue_one.lua
        _spoil(raw, counter, kind)
        batch = app.enqueue_many([add.s(5, 6), add.s(7, 8)])  # enqueue.lua
        _spoil(raw, counter, kind)
        assert drain(app).ran == 4  # finish.lua, publish.lua (the worker's events)
        assert lone.result(0) == 7 and [j.result(0) for j in batch] == [11, 15]
        _spoil(raw, counter, kind)
        later = add.options(delay=60).delay(9, 10)
        _spoil(raw, counter, kind)
        assert later.cancel()  # cancel.lua
        assert raw.xlen("{" + prefix + "}:q:default:s0") == 0  # each job queued once
        events = app.read_events(None, limit=100)
        assert [e.cursor for e in events] == [str(n) for n in range(1, len(events) + 1)]
        kinds = Counter(e.type for e in events)
        assert kinds["job.enqueued"] == 5 and kinds["job.succeeded"] == 4
        assert kinds["job.cancelled"] == 1
        _spoil(raw, counter, kind)  # where a follower starts: the log's last event
        assert app.broker.events_tail() == events[-1].cursor


@pytest.mark.parametrize("value", [None, "007", "+3", " 9", "-2", str(2**63 - 1), str(2**64)])
def test_a_follower_starts_after_the_last_event_whatever_the_counter_holds(
    broker: RedisBroker, raw: redis.Redis, prefix: str, value: str | None
) -> None:
    # The scripts take such a counter as lost and number on from the log's last event; a
    # follower that started at the counter's face value read old events again ("007": from
    # 7), or none ever (2^63 - 1), or failed (2^64: no stream id).
    broker.publish([b"e%d" % i for i in range(10)])
    counter = "{" + prefix + "}:events:n"
    raw.delete(counter)
    if value is not None:
        raw.set(counter, value)
    tail = broker.events_tail()
    assert tail == "10"
    broker.publish([b"new"])
    assert broker.read_events(tail, 0.0, 20) == [("11", b"new")]


def test_an_event_counter_that_cannot_be_repaired_costs_events_not_jobs(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    raw.set("{" + prefix + "}:events", "not a stream")
    raw.set("{" + prefix + "}:events:n", "abc")
    jobs = [env(), env()]
    assert broker.enqueue(jobs[:1], [b"a"]) == [jobs[0].id]  # enqueue.lua
    assert broker.enqueue(jobs[1:], [b"b"]) == [jobs[1].id]  # enqueue_one.lua
    broker.publish([b"c"])
    assert [d.id for d in fetch(broker)] == [j.id for j in jobs]


def test_event_numbers_past_10_to_the_14_are_written_whole(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    # Lua writes a number of 15 digits or more as 1e+14 when made a string: such an entry
    # id was refused, its events lost.
    raw.set("{" + prefix + "}:events:n", str(10**14 - 2))
    jobs = [env() for _ in range(3)]
    broker.enqueue(jobs, [b"e%d" % i for i in range(3)])  # enqueue.lua
    broker.enqueue([env()], [b"lone"])  # enqueue_one.lua
    broker.publish([b"p"])
    [d, *_] = fetch(broker)
    broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r", event=b"done")], [b"s"])
    first = 10**14 - 1
    got = broker.read_events(str(first - 1), 0.0, 10)
    wanted = [b"e0", b"e1", b"e2", b"lone", b"p", b"s", b"done"]
    assert got == [(str(first + i), e) for i, e in enumerate(wanted)]
    assert [i for i, _ in _event_entries(raw, prefix)] == [
        f"{n}-0" for n in (first + 2, first + 3, first + 4, first + 6)
    ]


def test_an_entry_written_by_hand_is_not_taken_for_events(
    broker: RedisBroker, raw: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from conveyor._events import read

    broker.publish([b'{"type":"job.enqueued","time":1.0}'])
    raw.xadd("{" + prefix + "}:events", {"e": "hello"}, id="2-0")
    raw.xadd("{" + prefix + "}:events", {"other": "field"}, id="3-0")  # holds no event
    broker.publish([b'{"type":"job.started","time":2.0}'])  # numbered past them
    assert [e.type for e in read(broker, None, 0.0, 10)] == ["job.enqueued", "job.started"]
    assert caplog.text.count("is not a Conveyor event") == 1


def test_a_result_kept_a_very_long_time_is_written_whole(
    broker: RedisBroker, raw: redis.Redis, prefix: str
) -> None:
    """A result TTL given as "forever" (10**11 s: 10**14 ms, past what '%.14g' writes
    without an exponent) is sent to Redis as whole digits: the finish records the status
    and the record's expiry, instead of failing after its first write."""
    e = env()
    broker.enqueue([e])
    [d] = fetch(broker)
    ttl = 10.0**11  # seconds
    assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"done", result_ttl=ttl)]) == [True]
    [record] = broker.get([e.id])
    assert record is not None and record.status is JobStatus.SUCCEEDED
    [key] = [k for k in ours(raw, prefix) if k.endswith(e.id)]
    assert raw.pttl(key) > ttl * 1000
