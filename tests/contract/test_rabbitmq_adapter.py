"""The RabbitMQ broker's own behaviour beside the conformance suite (which it passes over
each record store): tickets and the sweep, seen from RabbitMQ's side too.

* A ticket whose job has ended (a repeated enqueue of a finished job's id publishes one)
  wakes a worker, which acknowledges it and runs nothing: the queue is empty after.
* A job in the record store with no ticket (its producer died before publishing) is
  found by an idle worker's sweep.
* A ticket that comes before its record is written (an enqueue sends it while it writes)
  is kept, and the job claimed once the record is there; one whose record never comes is
  acknowledged a second later.
* A scheduled job's ticket wakes an idle worker, which then sleeps until the job is due.
* A look whose store read fails puts the tickets it took back, for a later look to settle.
* The waiting pairs an earlier version noted under its one key are read (once) and moved.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import msgspec
import pytest

from conveyor._message import Delivery, Envelope, JobStatus
from conveyor.brokers import Broker, open_broker
from conveyor.brokers._port import PARKED, Finish
from conveyor.testing.conformance import envelope
from redis_server import RedisServer, unique_prefix

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.timeout(60)]

LEASE = 30.0


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def worker(rabbitmq_url: str, redis_server: RedisServer, prefix: str) -> Iterator[Broker]:
    with open_broker(f"{rabbitmq_url}?sweep=30", store=redis_server.url, prefix=prefix) as b:
        yield b


def _ready(rabbitmq_url: str, queue: str) -> int:
    """Messages ready in a queue, as RabbitMQ counts them (a passive declare)."""
    import aio_pika

    async def count() -> int:
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            found = await channel.declare_queue(queue, passive=True)
            return found.declaration_result.message_count or 0

    return asyncio.run(count())


def test_a_ticket_of_an_ended_job_is_acknowledged_without_running(
    rabbitmq_url: str, worker: Broker, prefix: str
) -> None:
    job = envelope()
    worker.enqueue([job])
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
    assert worker.finish([Finish(got, JobStatus.SUCCEEDED, result=b"done")]) == [True]
    assert worker.enqueue([job]) == [job.id]  # not written again; its ticket is published
    start = time.monotonic()
    assert worker.fetch(["default"], "w", 10, LEASE, 1.0) == []
    assert time.monotonic() - start >= 0.9  # woken by the ticket, it looked, ran nothing
    (record,) = worker.get([job.id])
    assert record is not None and (record.status, record.deliveries) == (JobStatus.SUCCEEDED, 1)
    worker.close()  # an unacknowledged ticket would be ready again now
    assert _ready(rabbitmq_url, f"{prefix}.default") == 0


def test_a_job_without_a_ticket_is_found_by_the_sweep(
    rabbitmq_url: str, redis_server: RedisServer, prefix: str
) -> None:
    url = f"{rabbitmq_url}?sweep=0.3"
    with open_broker(url, store=redis_server.url, prefix=prefix) as worker:
        assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []  # consuming
        job = envelope()
        with open_broker(redis_server.url, prefix=prefix) as store:  # the record alone
            store.enqueue([job])
        start = time.monotonic()
        (got,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
        assert got.id == job.id and time.monotonic() - start < 2
    assert _ready(rabbitmq_url, f"{prefix}.default") == 0  # no ticket was ever published


def _ticket(rabbitmq_url: str, queue: str, job_id: str) -> None:
    """A ticket published from RabbitMQ's side, whatever the record store holds."""
    import aio_pika

    async def publish() -> None:
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(aio_pika.Message(job_id.encode()), queue)

    asyncio.run(publish())


def test_a_ticket_that_comes_before_its_record_still_wakes_the_worker(
    rabbitmq_url: str, redis_server: RedisServer, worker: Broker, prefix: str
) -> None:
    # An enqueue sends the ticket while it writes the record: the ticket can win.
    assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []  # consuming
    job = envelope()
    got: list[Delivery] = []
    waiting = threading.Thread(
        target=lambda: got.extend(worker.fetch(["default"], "w", 10, LEASE, 10.0))
    )
    waiting.start()
    _ticket(rabbitmq_url, f"{prefix}.default", job.id)
    time.sleep(0.05)  # the worker has looked and found no record
    start = time.monotonic()
    with open_broker(redis_server.url, prefix=prefix) as store:  # the record alone
        store.enqueue([job])
    waiting.join()
    assert [d.id for d in got] == [job.id] and time.monotonic() - start < 1  # no sweep (30 s)
    assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []  # settles what it holds
    worker.close()
    assert _ready(rabbitmq_url, f"{prefix}.default") == 0


def test_a_ticket_whose_record_never_comes_is_acknowledged(
    rabbitmq_url: str, worker: Broker, prefix: str
) -> None:
    assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []  # consuming
    _ticket(rabbitmq_url, f"{prefix}.default", envelope().id)
    assert worker.fetch(["default"], "w", 10, LEASE, 2.0) == []  # looked for, for 1 s
    worker.close()  # an unacknowledged ticket would be ready again now
    assert _ready(rabbitmq_url, f"{prefix}.default") == 0


def test_a_scheduled_job_wakes_an_idle_worker_when_due(worker: Broker) -> None:
    assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []  # consuming
    job = envelope(eta=time.time() + 1.0)
    start = time.monotonic()
    worker.enqueue([job])
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 10.0)  # its sweep is 30 s away
    assert got.id == job.id and 0.8 < time.monotonic() - start < 3


@pytest.fixture
def other(rabbitmq_url: str, redis_server: RedisServer, prefix: str) -> Iterator[Broker]:
    """A second worker's broker, serving another queue; its sweep is far too."""
    with open_broker(f"{rabbitmq_url}?sweep=30", store=redis_server.url, prefix=prefix) as b:
        assert b.fetch(["other"], "w2", 10, LEASE, 0.0) == []  # consuming
        yield b


def _waiting(depends_on: tuple[str, ...]) -> Envelope:
    return msgspec.structs.replace(envelope(queue="other"), depends_on=depends_on)


def _prompt(broker: Broker, release: Callable[[], object], job_id: str) -> None:
    """While ``broker`` waits in a fetch of ``other``, ``release`` makes the job due: the
    fetch gets it well before a sweep (30 s) would find it."""
    got: list[Delivery] = []
    waiting = threading.Thread(
        target=lambda: got.extend(broker.fetch(["other"], "w2", 10, LEASE, 10.0))
    )
    waiting.start()
    time.sleep(0.3)  # asleep in the fetch
    start = time.monotonic()
    release()
    waiting.join()
    assert [d.id for d in got] == [job_id] and time.monotonic() - start < 2


def test_a_finish_publishes_the_tickets_of_the_jobs_it_releases(
    worker: Broker, other: Broker
) -> None:
    first, second = envelope(), envelope()
    child = _waiting((first.id, second.id))
    worker.enqueue([first, second, child])
    got = worker.fetch(["default"], "w", 10, LEASE, 5.0)
    assert {d.id for d in got} == {first.id, second.id}
    assert worker.finish([Finish(got[0], JobStatus.SUCCEEDED, result=b"1")]) == [True]
    assert other.fetch(["other"], "w2", 10, LEASE, 0.5) == []  # one dependency is running
    _prompt(other, lambda: worker.finish([Finish(got[1], JobStatus.FAILED, result=b"2")]), child.id)


def test_a_job_whose_dependencies_have_ended_gets_its_ticket_at_enqueue(
    worker: Broker, other: Broker, prefix: str
) -> None:
    """And its note, written before its record, is removed, not left in the index."""
    first = envelope()
    worker.enqueue([first])
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
    assert worker.finish([Finish(got, JobStatus.SUCCEEDED, result=b"1")]) == [True]
    child = _waiting((first.id,))
    _prompt(other, lambda: worker.enqueue([child]), child.id)
    index = f"conveyor:rabbitmq:deps:{prefix}"
    assert first.id.encode() not in (worker.kv.get(index) or b"")
    assert worker.kv.get(f"{index}:{first.id}") is None


@pytest.mark.parametrize("end", ["cancel", "delete", "purge"])
def test_a_cancel_delete_or_purge_publishes_the_tickets_of_the_jobs_it_releases(
    worker: Broker, other: Broker, end: str
) -> None:
    first = envelope()
    child = _waiting((first.id,))
    worker.enqueue([first, child])
    ends: dict[str, Callable[[], object]] = {
        "cancel": lambda: worker.cancel(first.id),
        "delete": lambda: worker.delete([first.id]),
        "purge": lambda: worker.purge("default"),
    }
    _prompt(other, ends[end], child.id)


def test_promote_requeue_and_a_due_retry_publish_tickets(
    worker: Broker, other: Broker, redis_server: RedisServer, prefix: str
) -> None:
    """The other ways a job becomes due in a queue the caller does not serve."""
    step = envelope(queue="other", eta=PARKED)
    worker.enqueue([step])
    _prompt(other, lambda: worker.promote(step.id, b"ready"), step.id)
    failed = envelope(queue="other")
    with open_broker(redis_server.url, prefix=prefix) as store:  # fails it, holding no ticket
        store.enqueue([failed])
        (got,) = store.fetch(["other"], "w3", 10, LEASE, 0.0)
        assert store.finish([Finish(got, JobStatus.FAILED, result=b"no")]) == [True]
    _prompt(other, lambda: worker.requeue([(failed.id, b"again")]), failed.id)
    retried = envelope()
    worker.enqueue([retried])
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
    later = msgspec.structs.replace(retried, queue="other", eta=time.time() + 0.5)
    retry = Finish(got, JobStatus.SCHEDULED, retry=later)
    _prompt(other, lambda: worker.finish([retry]), retried.id)


def test_a_big_batch_shares_its_tickets_out(rabbitmq_url: str, worker: Broker, prefix: str) -> None:
    jobs = [envelope() for _ in range(200)]
    worker.enqueue(jobs)
    assert _ready(rabbitmq_url, f"{prefix}.default") == 50  # 200 jobs, 4 a ticket (<= 64)
    ran: set[str] = set()
    while len(ran) < len(jobs):
        got = worker.fetch(["default"], "w", 30, LEASE, 5.0)
        assert got, "a job was left without a ticket"
        worker.finish([Finish(d, JobStatus.SUCCEEDED, result=b"ok") for d in got])
        ran |= {d.id for d in got}
    assert worker.fetch(["default"], "w", 30, LEASE, 0.5) == []  # settles what it holds
    worker.close()  # an unacknowledged ticket would be ready again now
    assert ran == {j.id for j in jobs} and _ready(rabbitmq_url, f"{prefix}.default") == 0


def test_classic_queues_are_opt_in(rabbitmq_url: str, redis_server: RedisServer) -> None:
    import aio_pika
    import aiormq.exceptions

    prefix = unique_prefix()
    url = f"{rabbitmq_url}?sweep=30&queue_type=classic"
    with open_broker(url, store=redis_server.url, prefix=prefix) as worker:
        assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []  # consuming
        job = envelope()
        worker.enqueue([job])
        start = time.monotonic()
        (got,) = worker.fetch(["default"], "w", 10, LEASE, 10.0)
        assert got.id == job.id and time.monotonic() - start < 2  # its ticket woke it
    with open_broker(url, store=redis_server.url, prefix=prefix) as producer:
        producer.enqueue([envelope()])  # no worker consumes it now

    async def ticket_mode() -> int | None:
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            found = await channel.get_queue(f"{prefix}.default", ensure=False)
            message = await found.get(no_ack=True)
            return message.delivery_mode

    # transient: RabbitMQ does not write it to disk (the record is in the store)
    assert asyncio.run(ticket_mode()) == aio_pika.DeliveryMode.NOT_PERSISTENT

    async def declare_as_quorum() -> None:
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            arguments = {"x-queue-type": "quorum"}
            await channel.declare_queue(f"{prefix}.default", durable=True, arguments=arguments)

    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        asyncio.run(declare_as_quorum())  # it is a classic queue


def test_a_big_batch_sends_its_tickets_once_its_records_are_written(
    rabbitmq_url: str, worker: Broker, prefix: str
) -> None:
    """A ticket sent beside its record is kept by a worker only a while (``UNSEEN``); a big
    batch's write may take longer, so its tickets go once the records are written: none is
    in the queue while the write runs, and every one is there after."""
    store = worker._store  # type: ignore[attr-defined]
    write = store._enqueue
    seen: list[int] = []

    def slow_write(envelopes: Sequence[Envelope], events: Sequence[bytes]) -> list[str]:
        time.sleep(0.5)  # a big write, for a ticket sent before it to arrive meanwhile
        seen.append(_ready(rabbitmq_url, f"{prefix}.default"))
        return write(envelopes, events)  # type: ignore[no-any-return]

    worker.enqueue([envelope()])  # the queue is there, with one ticket
    store._enqueue = slow_write
    jobs = [envelope() for _ in range(200)]
    assert worker.enqueue(jobs) == [j.id for j in jobs]
    assert seen == [1]
    assert _ready(rabbitmq_url, f"{prefix}.default") == 1 + 50  # 200 jobs, 4 a ticket


def test_a_failed_store_read_in_a_look_leaves_no_ticket_held(
    rabbitmq_url: str, worker: Broker, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tickets a look took go back to their buffer when the store's read fails, so a
    later look settles them (before, the consumer held them, unseen, until it closed)."""
    import redis

    from conveyor._errors import BrokerUnavailable

    assert worker.fetch(["default"], "w", 10, LEASE, 0.0) == []  # consuming
    store = worker._store  # type: ignore[attr-defined]
    read = store._get

    def failing(job_ids: Sequence[str]) -> object:
        monkeypatch.setattr(store, "_get", read)  # once
        raise redis.ConnectionError("the store went away")

    monkeypatch.setattr(store, "_get", failing)
    _ticket(rabbitmq_url, f"{prefix}.default", envelope().id)  # a job with no record
    with pytest.raises(BrokerUnavailable):
        worker.fetch(["default"], "w", 10, LEASE, 5.0)
    assert worker.fetch(["default"], "w", 10, LEASE, 2.0) == []  # looked for, for 1 s
    worker.close()  # an unacknowledged ticket would be ready again now
    assert _ready(rabbitmq_url, f"{prefix}.default") == 0


@pytest.mark.parametrize("batch", [False, True], ids=["one", "several"])
def test_a_finish_reads_only_what_waits_for_the_jobs_it_ends(
    worker: Broker, other: Broker, monkeypatch: pytest.MonkeyPatch, *, batch: bool
) -> None:
    """What waits for a dependency is kept under that dependency: the end of another job
    does not read it (before, every finish read the one key of all the waiting pairs)."""
    first, second, lone = envelope(), envelope(), envelope()
    child, unrelated = _waiting((first.id,)), _waiting((second.id,))
    worker.enqueue([first, second, lone, child, unrelated])
    got = {d.id: d for d in worker.fetch(["default"], "w", 10, LEASE, 5.0)}
    assert set(got) == {first.id, second.id, lone.id}
    kv = worker.kv
    read = type(kv).get
    values: list[bytes] = []

    def spy(self: object, key: str) -> bytes | None:
        value = read(self, key)  # type: ignore[arg-type]
        values.append(value or b"")
        return value

    monkeypatch.setattr(type(kv), "get", spy)
    ending = [got[first.id], got[lone.id]] if batch else [got[first.id]]
    _prompt(
        other,
        lambda: worker.finish([Finish(d, JobStatus.SUCCEEDED, result=b"1") for d in ending]),
        child.id,
    )
    assert values and not [v for v in values if unrelated.id.encode() in v]


def test_a_full_index_of_dependencies_prunes_the_ended_ones(
    worker: Broker, other: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.brokers.rabbitmq import _waits

    monkeypatch.setattr(_waits, "KEPT", 1)
    first, second = envelope(), envelope()
    worker.enqueue([first, _waiting((first.id,))])
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
    store = worker._store  # type: ignore[attr-defined]
    assert store.finish([Finish(got, JobStatus.SUCCEEDED, result=b"1")]) == [True]  # unseen
    assert other.fetch(["other"], "w2", 10, LEASE, 5.0)  # the sweep's job: its first look
    child = _waiting((second.id,))
    worker.enqueue([second, child])  # the index is full: the ended dependency makes room
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
    _prompt(other, lambda: worker.finish([Finish(got, JobStatus.SUCCEEDED, result=b"2")]), child.id)


def test_pairs_noted_by_an_earlier_version_are_read_once(
    worker: Broker, other: Broker, prefix: str
) -> None:
    """Before the keys per dependency, the waiting pairs were under one key: a job
    enqueued then and released after an upgrade gets its ticket, not a sweep."""
    first = envelope()
    child = _waiting((first.id,))
    worker.enqueue([first])
    worker._store.enqueue([child])  # type: ignore[attr-defined]  # noted the earlier way:
    old = f"conveyor:rabbitmq:waiting:{prefix}"
    worker.kv.set(old, msgspec.json.encode([(first.id, child.id)]))
    (got,) = worker.fetch(["default"], "w", 10, LEASE, 5.0)
    _prompt(other, lambda: worker.finish([Finish(got, JobStatus.SUCCEEDED, result=b"1")]), child.id)
    assert worker.kv.get(old) is None


def test_a_duplicate_of_a_waiting_job_leaves_no_note(worker: Broker, prefix: str) -> None:
    """A unique key's duplicate is not written (its enqueue returns the existing job's
    id): its note goes, the existing job's stays."""
    first = envelope()
    worker.enqueue([first])
    child = msgspec.structs.replace(_waiting((first.id,)), key="k")
    again = msgspec.structs.replace(_waiting((first.id,)), key="k")
    assert worker.enqueue([child]) == [child.id]
    assert worker.enqueue([again]) == [child.id]
    noted = worker.kv.get(f"conveyor:rabbitmq:deps:{prefix}:{first.id}")
    assert noted is not None and msgspec.json.decode(noted) == [child.id]
