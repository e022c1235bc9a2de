"""The conformance suite: the broker and key-value contracts, as tests every adapter must pass.

An adapter is done when it passes. Use it from a test module that provides two fixtures,
``broker`` (a fresh, empty ``Broker`` per test, closed afterwards) and ``clock``::

    import pytest
    from conveyor._clock import FakeClock
    from conveyor.testing.conformance import BrokerConformance, KeyValueConformance

    @pytest.fixture
    def clock() -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def broker(clock, tmp_path):
        b = MyBroker(str(tmp_path / "jobs.db"), clock=clock)
        yield b
        b.close()

    class TestMyBroker(BrokerConformance): ...
    class TestMyKeyValue(KeyValueConformance): ...   # checks ``broker.kv``

``clock`` is the ``FakeClock`` the broker was built with: leases, ETAs and TTLs are then
driven by advancing it, with no sleeping. It is ``None`` when the backend keeps its own time
(Redis expiry): the tests then sleep, in units of ``real_time_unit`` seconds (a class
attribute an adapter may raise if its backend's timers are coarse).

Call ``pytest.register_assert_rewrite("conveyor.testing.conformance")`` in a ``conftest.py``
before this module is imported, so failures show the values compared. Needs pytest, a
development dependency.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar, Generic, TypeVar, cast

import msgspec
import pytest

from .._clock import FakeClock
from .._errors import DependencyNotFound, InvalidName, JobNotFound, ValidationError
from .._message import (
    DEFAULT_QUEUE,
    Delivery,
    Envelope,
    JobStatus,
    QueueStats,
    WorkerInfo,
    new_job_id,
)
from ..brokers._port import PARKED, Broker, Finish, LeaseState
from ..stores._port import KeyValue

__all__ = ["BrokerConformance", "DependencyConformance", "KeyValueConformance", "Timeline"]

T = TypeVar("T")

LONG = 600.0  # seconds: a lease or TTL no test outlives, on a fake or a real clock
PROMPT = 0.3  # seconds: how soon a blocked wait or fetch must return once woken
BLOCK = 0.9  # seconds: the longest real-time block a test sets up (kept under 1 s)


class Timeline:
    """Moves a test through time: a ``FakeClock`` jumps; real time is slept through.

    Durations are in units: one second on a fake clock, ``real_unit`` seconds on real time.
    """

    def __init__(self, clock: FakeClock | None, real_unit: float) -> None:
        self.clock = clock
        self.unit = 1.0 if clock is not None else real_unit

    @property
    def now(self) -> float:
        return self.clock.time() if self.clock is not None else time.time()

    def span(self, units: float) -> float:
        return units * self.unit

    def advance(self, units: float) -> None:
        if self.clock is not None:
            self.clock.advance(self.span(units))
        else:
            time.sleep(self.span(units))


class _Background(Generic[T]):
    """Run a call in a thread; ``join`` returns its value or re-raises its error."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._out: list[T] = []
        self._err: list[BaseException] = []
        self.returned_at = 0.0  # time.monotonic() when the call returned
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._out.append(self._fn())
        except BaseException as exc:
            self._err.append(exc)
        finally:
            self.returned_at = time.monotonic()

    def join(self, timeout: float = 10.0) -> T:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not return"
        if self._err:
            raise self._err[0]
        return self._out[0]


def envelope(
    queue: str = DEFAULT_QUEUE,
    *,
    priority: int = 0,
    eta: float | None = None,
    key: str | None = None,
    payload: bytes | None = None,
) -> Envelope:
    job_id = new_job_id()
    # Not JSON and not UTF-8: a broker must move payloads as opaque bytes.
    body = payload if payload is not None else b"\x00\xff payload of " + job_id.encode()
    return Envelope(id=job_id, queue=queue, payload=body, priority=priority, eta=eta, key=key)


def dependent(*depends_on: str, queue: str = DEFAULT_QUEUE) -> Envelope:
    """A job that waits for ``depends_on``."""
    return msgspec.structs.replace(envelope(queue), depends_on=depends_on)


def fetch(
    broker: Broker,
    queues: Sequence[str] = (DEFAULT_QUEUE,),
    *,
    count: int = 100,
    lease: float = LONG,
    block: float = 0.0,
    consumer: str = "consumer-1",
) -> list[Delivery]:
    return broker.fetch(list(queues), consumer, count, lease, block)


def fetch_one(broker: Broker, queues: Sequence[str] = (DEFAULT_QUEUE,), **kw: float) -> Delivery:
    got = broker.fetch(list(queues), "consumer-1", 1, kw.get("lease", LONG), 0.0)
    assert len(got) == 1, f"expected one delivery from {list(queues)}, got {got}"
    return got[0]


def finish(
    broker: Broker,
    delivery: Delivery,
    status: JobStatus = JobStatus.SUCCEEDED,
    *,
    result: bytes | None = b"result",
    result_ttl: float = LONG,
    retry: Envelope | None = None,
    reason: str = "",
) -> bool:
    [done] = broker.finish(
        [Finish(delivery, status, result, result_ttl, retry=retry, reason=reason)]
    )
    return done


def status(broker: Broker, job_id: str) -> JobStatus | None:
    [record] = broker.get([job_id])
    return None if record is None else record.status


def worker_info(worker_id: str, now: float) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="host-1",
        pid=4242,
        queues=["default", "images"],
        concurrency=8,
        pool="threads",
        started_at=now,
        processed=7,
    )


class DependencyConformance:
    """``Envelope.depends_on``: the dependency part of the ``Broker`` contract.

    A job waits (``scheduled``, parked) until every dependency that had not ended at its
    enqueue has become terminal; the broker releases it whatever they ended as."""

    real_time_unit: ClassVar[float] = 0.1

    @pytest.fixture
    def timeline(self, clock: FakeClock | None) -> Timeline:
        return Timeline(clock, self.real_time_unit)

    def _run(self, broker: Broker, job_id: str, how: JobStatus = JobStatus.SUCCEEDED) -> Delivery:
        """Fetch exactly ``job_id`` (the only job due) and finish it ``how``."""
        [d] = fetch(broker)
        assert d.id == job_id
        assert finish(broker, d, how, reason=f"ended {how}")
        return d

    def test_a_dependency_already_ended_counts_for_nothing(self, broker: Broker) -> None:
        a = envelope()
        broker.enqueue([a])
        self._run(broker, a.id)
        b = dependent(a.id)
        assert broker.enqueue([b]) == [b.id]
        assert status(broker, b.id) is JobStatus.QUEUED
        assert [d.id for d in fetch(broker)] == [b.id]

    def test_a_dependent_waits_parked_until_its_dependency_ends(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        a = envelope()
        b = dependent(a.id)
        broker.enqueue([a])
        broker.enqueue([b])
        assert status(broker, b.id) is JobStatus.SCHEDULED
        timeline.advance(3)
        self._run(broker, a.id)  # b is not handed out before a has ended
        assert status(broker, b.id) is JobStatus.QUEUED
        [d] = fetch(broker)
        assert (d.id, d.payload, d.deliveries) == (b.id, b.payload, 1)

    @pytest.mark.parametrize("first", [0, 1])
    def test_two_dependencies_in_either_order(self, broker: Broker, first: int) -> None:
        deps = [envelope("one"), envelope("two")]
        broker.enqueue(deps)
        b = dependent(deps[0].id, deps[1].id, queue="three")
        broker.enqueue([b])
        order = [deps[first], deps[1 - first]]
        assert finish(broker, fetch_one(broker, [order[0].queue]))
        assert status(broker, b.id) is JobStatus.SCHEDULED
        assert fetch(broker, ["three"]) == []
        assert finish(broker, fetch_one(broker, [order[1].queue]))
        assert status(broker, b.id) is JobStatus.QUEUED
        assert [d.id for d in fetch(broker, ["three"])] == [b.id]

    @pytest.mark.parametrize("how", [JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED])
    def test_a_dependency_that_did_not_succeed_still_releases(
        self, broker: Broker, how: JobStatus
    ) -> None:
        # The broker does not judge outcomes: the dependent's worker reads them.
        a = envelope()
        b = dependent(a.id)
        broker.enqueue([a, b])
        if how is JobStatus.CANCELLED:
            assert broker.cancel(a.id) is JobStatus.CANCELLED
        else:
            self._run(broker, a.id, how)
        assert status(broker, b.id) is JobStatus.QUEUED
        assert [d.id for d in fetch(broker)] == [b.id]

    def test_a_dependency_cancelled_while_running_releases_on_its_release(
        self, broker: Broker
    ) -> None:
        a = envelope()
        b = dependent(a.id)
        broker.enqueue([a, b])
        d = fetch_one(broker)
        assert broker.cancel(a.id) is JobStatus.RUNNING
        assert status(broker, b.id) is JobStatus.SCHEDULED
        assert broker.release([d]) == [True]
        assert status(broker, a.id) is JobStatus.CANCELLED
        assert [x.id for x in fetch(broker)] == [b.id]

    def test_a_dependency_cancelled_while_running_releases_when_its_worker_died(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        a = envelope()
        b = dependent(a.id)
        broker.enqueue([a, b])
        fetch_one(broker, lease=timeline.span(2))
        broker.cancel(a.id)
        timeline.advance(3)
        # A fetch that finds the lease expired ends a cancelled, which releases b.
        got = [d.id for d in fetch(broker)] or [d.id for d in fetch(broker)]
        assert got == [b.id]
        assert status(broker, a.id) is JobStatus.CANCELLED

    def test_a_diamond_waits_for_both_sides(self, broker: Broker) -> None:
        a = envelope()
        b, c = dependent(a.id), dependent(a.id)
        d = dependent(b.id, c.id)
        broker.enqueue([a, b, c, d])
        assert [status(broker, e.id) for e in (b, c, d)] == [JobStatus.SCHEDULED] * 3
        self._run(broker, a.id)
        got = {x.id: x for x in fetch(broker)}
        assert set(got) == {b.id, c.id}
        assert finish(broker, got[c.id])
        assert status(broker, d.id) is JobStatus.SCHEDULED
        assert finish(broker, got[b.id], JobStatus.FAILED)
        assert [x.id for x in fetch(broker)] == [d.id]

    def test_a_dependent_of_a_dependent(self, broker: Broker) -> None:
        a = envelope()
        b = dependent(a.id)
        c = dependent(b.id)
        broker.enqueue([a, b, c])
        self._run(broker, a.id)
        assert status(broker, c.id) is JobStatus.SCHEDULED
        self._run(broker, b.id)
        assert status(broker, c.id) is JobStatus.QUEUED
        assert [x.id for x in fetch(broker)] == [c.id]

    def test_enqueue_with_dependencies_is_idempotent_on_the_job_id(self, broker: Broker) -> None:
        a1, a2 = envelope(), envelope()
        broker.enqueue([a1, a2])
        b = dependent(a1.id, a2.id)
        assert broker.enqueue([b]) == [b.id]
        assert broker.enqueue([b]) == [b.id]  # a producer retrying: counted once
        assert finish(broker, fetch_one(broker))
        assert status(broker, b.id) is JobStatus.SCHEDULED
        self._run(broker, a2.id)
        assert [x.id for x in fetch(broker)] == [b.id]
        assert fetch(broker) == []

    def test_a_repeated_finish_of_a_dependency_counts_once(self, broker: Broker) -> None:
        a1, a2 = envelope(), envelope()
        broker.enqueue([a1, a2])
        b = dependent(a1.id, a2.id)
        broker.enqueue([b])
        d1 = fetch_one(broker)
        assert finish(broker, d1)
        assert finish(broker, d1)  # resent after a lost reply: the same delivery again
        assert status(broker, b.id) is JobStatus.SCHEDULED
        self._run(broker, a2.id)
        assert status(broker, b.id) is JobStatus.QUEUED

    def test_a_stale_finish_of_a_dependency_counts_nothing(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        a1, a2 = envelope(), envelope("other")
        broker.enqueue([a1, a2])
        b = dependent(a1.id, a2.id)
        broker.enqueue([b])
        stale = fetch_one(broker, lease=timeline.span(2))
        timeline.advance(3)
        live = fetch_one(broker)  # reclaimed: a new delivery of the same job
        assert live.id == stale.id
        assert not finish(broker, stale)
        assert status(broker, b.id) is JobStatus.SCHEDULED
        assert finish(broker, live)
        assert not finish(broker, stale)
        assert status(broker, b.id) is JobStatus.SCHEDULED
        assert finish(broker, fetch_one(broker, ["other"]))
        assert status(broker, b.id) is JobStatus.QUEUED

    def test_a_batch_may_depend_on_its_earlier_jobs(self, broker: Broker) -> None:
        a = envelope()
        b = dependent(a.id)
        assert broker.enqueue([a, b]) == [a.id, b.id]
        assert status(broker, b.id) is JobStatus.SCHEDULED
        self._run(broker, a.id)
        assert [x.id for x in fetch(broker)] == [b.id]

    def test_an_unknown_dependency_writes_nothing(self, broker: Broker) -> None:
        x = envelope()
        missing = new_job_id()
        with pytest.raises(DependencyNotFound, match=missing) as caught:
            broker.enqueue([x, dependent(missing)])
        assert isinstance(caught.value, JobNotFound)
        assert isinstance(caught.value, ValidationError)
        assert broker.get([x.id]) == [None]
        later = envelope()
        with pytest.raises(DependencyNotFound):  # a later job of the batch is not known yet
            broker.enqueue([dependent(later.id), later])
        assert broker.get([later.id]) == [None]
        assert fetch(broker) == []

    def test_enqueue_async_takes_dependencies_too(self, broker: Broker) -> None:
        a = envelope()
        b = dependent(a.id)
        assert asyncio.run(broker.enqueue_async([a, b])) == [a.id, b.id]
        assert status(broker, b.id) is JobStatus.SCHEDULED
        with pytest.raises(DependencyNotFound):
            asyncio.run(broker.enqueue_async([dependent(new_job_id())]))
        self._run(broker, a.id)
        assert [x.id for x in fetch(broker)] == [b.id]

    def test_an_expired_dependency_is_unknown(self, broker: Broker, timeline: Timeline) -> None:
        a = envelope()
        broker.enqueue([a])
        assert finish(broker, fetch_one(broker), result_ttl=timeline.span(1))
        timeline.advance(2)
        with pytest.raises(DependencyNotFound):
            broker.enqueue([dependent(a.id)])

    def test_a_cancelled_dependent_stays_cancelled(self, broker: Broker) -> None:
        a = envelope()
        b, c = dependent(a.id), dependent(a.id)
        broker.enqueue([a, b, c])
        assert broker.cancel(b.id) is JobStatus.CANCELLED
        self._run(broker, a.id)
        assert status(broker, b.id) is JobStatus.CANCELLED
        assert [x.id for x in fetch(broker)] == [c.id]

    def test_a_dependent_is_not_promoted(self, broker: Broker) -> None:
        a = envelope()
        b = dependent(a.id)
        broker.enqueue([a, b])
        assert not broker.promote(b.id, b"not a workflow step")
        assert status(broker, b.id) is JobStatus.SCHEDULED

    def test_purge_releases_the_dependents_of_what_it_deletes(self, broker: Broker) -> None:
        # Deleted, not ended: the dependent runs into a dependency without a record.
        a = envelope("a")
        b = dependent(a.id, queue="b")
        broker.enqueue([a, b])
        assert broker.purge("a") == 1
        assert broker.get([a.id]) == [None]
        assert status(broker, b.id) is JobStatus.QUEUED
        assert [d.id for d in fetch(broker, ["b"])] == [b.id]

    def test_a_purged_dependent_is_forgotten_by_its_dependencies(self, broker: Broker) -> None:
        a, other = envelope(), envelope("c")
        b = dependent(a.id, queue="b")
        broker.enqueue([a, other, b])
        assert broker.purge("b") == 1
        assert broker.enqueue([b]) == [b.id]  # the same id, the same dependency: waits again
        assert status(broker, b.id) is JobStatus.SCHEDULED
        assert broker.purge("b") == 1
        again = msgspec.structs.replace(b, depends_on=(other.id,))  # now waits for another
        assert broker.enqueue([again]) == [b.id]
        self._run(broker, a.id)
        assert status(broker, b.id) is JobStatus.SCHEDULED  # a's end is not its own any more
        assert fetch(broker, ["b"]) == []

    def test_a_cancelled_dependent_is_forgotten_by_its_dependencies(
        self, broker: Broker, clock: FakeClock | None
    ) -> None:
        if clock is None:  # the same adapter runs this on its fake clock
            pytest.skip("a cancelled record is kept a day: only a fake clock gets past it")
        a, other = envelope(), envelope("c")
        b = dependent(a.id, queue="b")
        broker.enqueue([a, other, b])
        assert broker.cancel(b.id) is JobStatus.CANCELLED
        clock.advance(2 * 86400)  # the cancelled record expired; a and other still wait
        again = msgspec.structs.replace(b, depends_on=(other.id,))  # the id, another wait
        assert broker.enqueue([again]) == [b.id]
        self._run(broker, a.id)
        assert status(broker, b.id) is JobStatus.SCHEDULED  # a's end is not its own any more

    def _enqueue_again_waits(self, broker: Broker, jobs: Sequence[Envelope]) -> None:
        """Ids a purge deleted start afresh: every job after the first waits again."""
        assert broker.enqueue(list(jobs)) == [e.id for e in jobs]
        assert [status(broker, e.id) for e in jobs[1:]] == [JobStatus.SCHEDULED] * (
            len(jobs) - 1
        )
        assert [d.id for d in fetch(broker, [jobs[0].queue])] == [jobs[0].id]

    def test_purge_deletes_a_dependent_in_the_same_queue(self, broker: Broker) -> None:
        a = envelope("doomed")
        b = dependent(a.id, queue="doomed")
        broker.enqueue([a, b])
        assert broker.purge("doomed") == 2
        assert broker.get([a.id, b.id]) == [None, None]
        assert fetch(broker, ["doomed"]) == []
        assert broker.purge("doomed") == 0
        left = [(s.queued, s.scheduled) for s in broker.stats() if s.queue == "doomed"]
        assert left in ([], [(0, 0)])
        self._enqueue_again_waits(broker, [a, b])  # nothing of the purged ones is left

    def test_purge_deletes_a_chain_in_the_same_queue(self, broker: Broker) -> None:
        a = envelope("doomed")
        b = dependent(a.id, queue="doomed")
        c = dependent(b.id, queue="doomed")
        broker.enqueue([a, b, c])
        assert broker.purge("doomed") == 3
        assert broker.get([a.id, b.id, c.id]) == [None, None, None]
        assert fetch(broker, ["doomed"]) == []
        assert broker.purge("doomed") == 0
        self._enqueue_again_waits(broker, [a, b, c])

    def test_payload_is_kept_whatever_the_status(self, broker: Broker) -> None:
        a, b = envelope(), envelope()
        broker.enqueue([a, b])
        assert broker.payload(a.id) == a.payload
        assert broker.cancel(b.id) is JobStatus.CANCELLED
        assert broker.payload(b.id) == b.payload
        assert broker.payload(new_job_id()) is None


class BrokerConformance(DependencyConformance):
    """The ``Broker`` port's contract (see ``conveyor.brokers._port``), dependencies
    included."""

    real_time_unit: ClassVar[float] = 0.1

    @pytest.fixture
    def timeline(self, clock: FakeClock | None) -> Timeline:
        return Timeline(clock, self.real_time_unit)

    # -- enqueue ---------------------------------------------------------------------------

    def test_enqueue_one_returns_its_id_and_records_it_queued(self, broker: Broker) -> None:
        env = envelope("images")
        assert broker.enqueue([env]) == [env.id]
        [record] = broker.get([env.id])
        assert record is not None
        assert (record.id, record.status, record.queue) == (env.id, JobStatus.QUEUED, "images")
        assert record.result is None

    def test_enqueue_batch_returns_every_id_in_order(self, broker: Broker) -> None:
        batch = [envelope() for _ in range(5)]
        assert broker.enqueue(batch) == [e.id for e in batch]
        assert [status(broker, e.id) for e in batch] == [JobStatus.QUEUED] * 5
        assert broker.enqueue([]) == []

    def test_enqueue_async_writes_like_enqueue(self, broker: Broker) -> None:
        batch = [envelope(), envelope()]
        assert asyncio.run(broker.enqueue_async(batch)) == [e.id for e in batch]
        assert {d.id for d in fetch(broker)} == {e.id for e in batch}

    def test_enqueue_batch_is_all_or_nothing(self, broker: Broker) -> None:
        good = [envelope(), envelope()]
        broken = cast(Envelope, None)  # fails however the adapter reads it
        try:
            broker.enqueue([*good, broken])
        except Exception:  # which error does not matter here; what was written does
            pass
        else:
            pytest.fail("enqueue accepted a batch holding None")
        assert broker.get([e.id for e in good]) == [None, None]
        assert fetch(broker) == []

    def test_enqueue_is_idempotent_on_the_job_id(self, broker: Broker) -> None:
        env = envelope()
        again = Envelope(env.id, env.queue, b"a retried producer's copy", priority=9)
        assert broker.enqueue([env, again]) == [env.id, env.id]
        assert broker.enqueue([again]) == [env.id]
        [d] = fetch(broker)
        assert (d.id, d.payload, d.priority) == (env.id, env.payload, 0)
        assert broker.enqueue([again]) == [env.id]  # while running
        assert fetch(broker) == []
        assert finish(broker, d, result=b"once")
        assert broker.enqueue([again]) == [env.id]  # once finished
        assert fetch(broker) == []
        [record] = broker.get([env.id])
        assert record is not None
        assert (record.status, record.result) == (JobStatus.SUCCEEDED, b"once")

    # -- fetch -----------------------------------------------------------------------------

    def test_fetch_hands_out_a_delivery_under_a_token(self, broker: Broker) -> None:
        env = envelope("images", priority=3)
        broker.enqueue([env])
        [d] = fetch(broker, ["images"])
        assert (d.id, d.queue, d.payload, d.priority, d.deliveries) == (
            env.id,
            "images",
            env.payload,
            3,
            1,
        )
        assert d.token
        assert status(broker, env.id) is JobStatus.RUNNING

    def test_fetch_hands_out_higher_priority_first_fifo_within_one(self, broker: Broker) -> None:
        a0, b5, c9, d5, e0 = (envelope(priority=p) for p in (0, 5, 9, 5, 0))
        broker.enqueue([a0, b5, c9])
        broker.enqueue([d5, e0])
        order = [fetch_one(broker).id for _ in range(5)]
        assert order == [c9.id, b5.id, d5.id, a0.id, e0.id]
        assert fetch(broker) == []

    def test_fetch_serves_several_queues_together(self, broker: Broker) -> None:
        x1, y1, x2, y2 = (
            envelope("qa", priority=1),
            envelope("qb", priority=5),
            *(envelope(q, priority=1) for q in ("qa", "qb")),
        )
        broker.enqueue([x1, y1, x2, y2])
        order = [fetch_one(broker, ["qa", "qb"]).id for _ in range(4)]
        assert order[0] == y1.id  # the higher priority wins across queues
        assert set(order[1:]) == {x1.id, x2.id, y2.id}
        assert order.index(x1.id) < order.index(x2.id)
        assert fetch(broker, ["qa", "qb"]) == []

    def test_fetch_hands_out_at_most_count(self, broker: Broker) -> None:
        broker.enqueue([envelope() for _ in range(5)])
        sizes = [len(fetch(broker, count=2)) for _ in range(4)]
        assert sizes == [2, 2, 1, 0]

    def test_fetch_ignores_other_queues(self, broker: Broker) -> None:
        env = envelope("qa")
        broker.enqueue([env])
        assert fetch(broker, ["qb"]) == []
        assert fetch(broker, [DEFAULT_QUEUE]) == []
        assert [d.id for d in fetch(broker, ["qa"])] == [env.id]

    def test_fetch_blocks_up_to_block_when_empty(self, broker: Broker) -> None:
        start = time.monotonic()
        assert fetch(broker, block=0.0) == []
        assert time.monotonic() - start < PROMPT
        start = time.monotonic()
        assert fetch(broker, block=0.2) == []
        assert 0.1 <= time.monotonic() - start < BLOCK

    def test_blocked_fetch_wakes_when_another_thread_enqueues(self, broker: Broker) -> None:
        env = envelope()
        waiter = _Background(lambda: fetch(broker, block=BLOCK))
        time.sleep(0.1)
        enqueued_at = time.monotonic()
        broker.enqueue([env])
        assert [d.id for d in waiter.join()] == [env.id]
        assert waiter.returned_at - enqueued_at < PROMPT

    # -- delays ----------------------------------------------------------------------------

    def test_delayed_job_is_invisible_until_its_eta(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        env = envelope(eta=timeline.now + timeline.span(5))
        assert broker.enqueue([env]) == [env.id]
        assert status(broker, env.id) is JobStatus.SCHEDULED
        timeline.advance(3)
        assert fetch(broker) == []
        assert status(broker, env.id) is JobStatus.SCHEDULED
        timeline.advance(3)
        [d] = fetch(broker)
        assert (d.id, d.payload, d.deliveries) == (env.id, env.payload, 1)
        assert status(broker, env.id) is JobStatus.RUNNING

    def test_job_with_a_past_eta_is_queued_at_once(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        env = envelope(eta=timeline.now - 1.0)
        broker.enqueue([env])
        assert status(broker, env.id) is JobStatus.QUEUED
        assert [d.id for d in fetch(broker)] == [env.id]

    def test_parked_job_waits_for_promote(self, broker: Broker, timeline: Timeline) -> None:
        parked = Envelope(new_job_id(), DEFAULT_QUEUE, b"no inputs yet", eta=PARKED)
        assert broker.enqueue([parked]) == [parked.id]
        assert status(broker, parked.id) is JobStatus.SCHEDULED
        timeline.advance(6)
        assert fetch(broker) == []
        assert broker.promote(parked.id, b"inputs ready")
        assert status(broker, parked.id) is JobStatus.QUEUED
        assert not broker.promote(parked.id, b"promoted twice")
        [d] = fetch(broker)
        assert (d.id, d.payload, d.deliveries) == (parked.id, b"inputs ready", 1)
        assert not broker.promote(parked.id, b"while running")
        assert finish(broker, d)
        assert not broker.promote(parked.id, b"once finished")

    def test_promote_refuses_jobs_that_are_not_parked(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        queued, delayed = envelope(), envelope(eta=timeline.now + timeline.span(5))
        broker.enqueue([queued, delayed])
        assert not broker.promote(new_job_id(), b"unknown")
        assert not broker.promote(queued.id, b"queued")
        assert not broker.promote(delayed.id, b"delayed")
        assert status(broker, delayed.id) is JobStatus.SCHEDULED
        assert [(d.id, d.payload) for d in fetch(broker)] == [(queued.id, queued.payload)]
        timeline.advance(6)
        assert [(d.id, d.payload) for d in fetch(broker)] == [(delayed.id, delayed.payload)]

    # -- leases ----------------------------------------------------------------------------

    def test_leased_job_is_not_handed_out_again(self, broker: Broker, timeline: Timeline) -> None:
        broker.enqueue([envelope()])
        fetch_one(broker, lease=timeline.span(5))
        timeline.advance(3)
        assert fetch(broker) == []
        assert fetch(broker, consumer="consumer-2") == []

    def test_expired_lease_is_reclaimed_with_a_new_token(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        env = envelope()
        broker.enqueue([env])
        first = fetch_one(broker, lease=timeline.span(5))
        timeline.advance(6)  # the first worker died
        [second] = fetch(broker, consumer="consumer-2")
        assert (second.id, second.payload, second.deliveries) == (env.id, env.payload, 2)
        assert second.token != first.token
        assert status(broker, env.id) is JobStatus.RUNNING

    def test_renew_extends_the_lease(self, broker: Broker, timeline: Timeline) -> None:
        broker.enqueue([envelope()])
        d = fetch_one(broker, lease=timeline.span(5))
        timeline.advance(3)
        assert broker.renew([d], timeline.span(5)) == [LeaseState.OK]
        timeline.advance(3)  # past the first lease, inside the renewed one
        assert fetch(broker) == []
        timeline.advance(3)
        assert [again.deliveries for again in fetch(broker)] == [2]

    def test_renew_of_a_taken_over_delivery_is_lost(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        broker.enqueue([envelope()])
        stale = fetch_one(broker, lease=timeline.span(5))
        timeline.advance(6)
        live = fetch_one(broker)
        assert broker.renew([stale, live], LONG) == [LeaseState.LOST, LeaseState.OK]
        assert finish(broker, live)
        assert broker.renew([live], LONG) == [LeaseState.LOST]

    # -- fenced finish ---------------------------------------------------------------------

    def _taken_over(self, broker: Broker, timeline: Timeline) -> tuple[Delivery, Delivery]:
        broker.enqueue([envelope()])
        stale = fetch_one(broker, lease=timeline.span(5))
        timeline.advance(6)
        live = fetch_one(broker)
        return stale, live

    def test_stale_finish_is_refused_while_the_live_attempt_runs(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        stale, live = self._taken_over(broker, timeline)
        assert not finish(broker, stale, result=b"zombie")
        assert status(broker, live.id) is JobStatus.RUNNING
        assert finish(broker, live, result=b"live")
        [record] = broker.get([live.id])
        assert record is not None
        assert (record.status, record.result) == (JobStatus.SUCCEEDED, b"live")

    def test_stale_finish_after_the_live_one_changes_nothing(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        stale, live = self._taken_over(broker, timeline)
        assert finish(broker, live, result=b"live")
        assert not finish(broker, stale, JobStatus.FAILED, result=b"zombie", reason="zombie")
        [record] = broker.get([live.id])
        assert record is not None
        assert (record.status, record.result) == (JobStatus.SUCCEEDED, b"live")
        assert broker.entries(JobStatus.FAILED, None, 10) == []

    def test_finish_reports_per_delivery(self, broker: Broker, timeline: Timeline) -> None:
        stale, live = self._taken_over(broker, timeline)
        broker.enqueue([envelope()])
        other = fetch_one(broker)
        outcomes = [Finish(d, JobStatus.SUCCEEDED, b"r") for d in (stale, live, other)]
        assert broker.finish(outcomes) == [False, True, True]
        # A repeat of the same call (a client retrying after a lost reply) is told it took
        # effect, and changes nothing.
        again = [Finish(d, JobStatus.FAILED, b"other") for d in (stale, live, other)]
        assert broker.finish(again) == [False, True, True]
        records = broker.get([live.id, other.id])
        assert [(r.status, r.result) for r in records if r is not None] == [
            (JobStatus.SUCCEEDED, b"r"),
            (JobStatus.SUCCEEDED, b"r"),
        ]

    # -- results ---------------------------------------------------------------------------

    def test_finish_succeeded_stores_the_result_for_wait(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        assert finish(broker, fetch_one(broker), result=b"\x00the result")
        [record] = broker.get([env.id])
        assert record is not None
        assert (record.status, record.result) == (JobStatus.SUCCEEDED, b"\x00the result")
        waited = broker.wait(env.id, BLOCK)
        assert waited is not None
        assert (waited.id, waited.status, waited.result) == (
            env.id,
            JobStatus.SUCCEEDED,
            b"\x00the result",
        )
        assert fetch(broker) == []

    def test_result_expires_after_its_ttl(self, broker: Broker, timeline: Timeline) -> None:
        env = envelope()
        broker.enqueue([env])
        assert finish(broker, fetch_one(broker), result_ttl=timeline.span(5))
        timeline.advance(3)
        assert status(broker, env.id) is JobStatus.SUCCEEDED
        timeline.advance(3)
        assert broker.get([env.id]) == [None]
        with pytest.raises(JobNotFound):
            broker.wait(env.id, 0.1)

    def test_retry_puts_the_job_back_scheduled_with_its_new_payload(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        env = envelope()
        broker.enqueue([env])
        first = fetch_one(broker, lease=timeline.span(5))
        timeline.advance(6)
        second = fetch_one(broker)  # a reclaim: deliveries is now 2
        assert second.deliveries == 2
        retry = Envelope(
            id=env.id, queue=env.queue, payload=b"attempt 1", eta=timeline.now + timeline.span(5)
        )
        assert not finish(broker, first, JobStatus.SCHEDULED, result=None, retry=retry)
        assert finish(broker, second, JobStatus.SCHEDULED, result=None, retry=retry)
        assert status(broker, env.id) is JobStatus.SCHEDULED
        timeline.advance(3)
        assert fetch(broker) == []
        timeline.advance(3)
        [third] = fetch(broker)
        assert (third.id, third.payload, third.deliveries) == (env.id, b"attempt 1", 1)
        assert third.token not in (first.token, second.token)

    def test_failed_and_dead_jobs_are_kept_newest_first(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        a, b, c = envelope(), envelope("images"), envelope()
        broker.enqueue([a, b, c])
        # One queue at a time: FIFO holds within a queue, not across queues.
        da, db, dc = (fetch_one(broker, [q]) for q in (a.queue, "images", c.queue))
        assert finish(broker, da, JobStatus.FAILED, reason="ValueError: bad a")
        timeline.advance(1)
        assert finish(broker, db, JobStatus.DEAD, reason="poison: crashed 5 times")
        timeline.advance(1)
        assert finish(broker, dc, JobStatus.FAILED, reason="KeyError: c")

        failed = broker.entries(JobStatus.FAILED, None, 10)
        assert [(e.id, e.queue, e.payload, e.status, e.reason) for e in failed] == [
            (c.id, c.queue, c.payload, JobStatus.FAILED, "KeyError: c"),
            (a.id, a.queue, a.payload, JobStatus.FAILED, "ValueError: bad a"),
        ]
        dead = broker.entries(JobStatus.DEAD, None, 10)
        assert [(e.id, e.queue, e.payload, e.reason) for e in dead] == [
            (b.id, "images", b.payload, "poison: crashed 5 times")
        ]
        assert [e.id for e in broker.entries(JobStatus.FAILED, None, 1)] == [c.id]
        assert broker.entries(JobStatus.FAILED, "images", 10) == []
        assert [e.id for e in broker.entries(JobStatus.DEAD, "images", 10)] == [b.id]
        assert [status(broker, j.id) for j in (a, b, c)] == [
            JobStatus.FAILED,
            JobStatus.DEAD,
            JobStatus.FAILED,
        ]

    def _fail(self, broker: Broker, how: JobStatus, n: int) -> list[Envelope]:
        envs = [envelope() for _ in range(n)]
        broker.enqueue(envs)
        for d in fetch(broker):
            assert finish(broker, d, how, reason=f"{how} on purpose")
        return envs

    def test_requeue_by_id_puts_a_job_back(self, broker: Broker) -> None:
        a, b = self._fail(broker, JobStatus.FAILED, 2)
        assert broker.requeue([a.id], JobStatus.DEAD) == 0  # a is failed, not dead
        assert broker.requeue([a.id], JobStatus.FAILED) == 1
        assert status(broker, a.id) is JobStatus.QUEUED
        assert [e.id for e in broker.entries(JobStatus.FAILED, None, 10)] == [b.id]
        [d] = fetch(broker)
        # Counting starts over, else a requeued dead job would be dead-lettered at once.
        assert (d.id, d.payload, d.deliveries) == (a.id, a.payload, 1)

    def test_requeue_all(self, broker: Broker) -> None:
        failed = self._fail(broker, JobStatus.FAILED, 2)
        [dead] = self._fail(broker, JobStatus.DEAD, 1)
        assert broker.requeue(None, JobStatus.FAILED) == 2
        assert broker.entries(JobStatus.FAILED, None, 10) == []
        assert [e.id for e in broker.entries(JobStatus.DEAD, None, 10)] == [dead.id]
        assert {(d.id, d.payload) for d in fetch(broker)} == {(e.id, e.payload) for e in failed}
        assert broker.requeue(None, JobStatus.DEAD) == 1
        assert [d.id for d in fetch(broker)] == [dead.id]

    # -- release and progress --------------------------------------------------------------

    def test_release_hands_a_job_back_without_counting_a_delivery(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        first = fetch_one(broker)
        assert broker.release([first]) == [True]
        assert status(broker, env.id) is JobStatus.QUEUED
        second = fetch_one(broker)  # at once: no clock moved
        assert (second.id, second.deliveries) == (env.id, 1)
        assert second.token != first.token
        assert broker.release([first]) == [False]
        assert broker.renew([second], LONG) == [LeaseState.OK]

    def test_progress_is_recorded_and_fenced(self, broker: Broker, timeline: Timeline) -> None:
        stale, live = self._taken_over(broker, timeline)
        assert broker.progress(live, 0.25, "a quarter")
        assert not broker.progress(stale, 0.9, "zombie")
        [record] = broker.get([live.id])
        assert record is not None
        assert (record.status, record.progress, record.progress_note) == (
            JobStatus.RUNNING,
            0.25,
            "a quarter",
        )
        assert broker.progress(live, 0.5, None)
        [record] = broker.get([live.id])
        assert record is not None
        assert (record.progress, record.progress_note) == (0.5, None)

    def test_running_jobs_are_listed(self, broker: Broker) -> None:
        running, waiting = envelope(), envelope()
        broker.enqueue([running, waiting])
        delivery = fetch_one(broker)
        assert delivery.id == running.id
        listed = broker.entries(JobStatus.RUNNING, None, 10)
        assert [(e.id, e.queue, e.payload, e.status) for e in listed] == [
            (running.id, running.queue, running.payload, JobStatus.RUNNING)
        ]
        assert broker.entries(JobStatus.RUNNING, "images", 10) == []

    # -- cancel ----------------------------------------------------------------------------

    def test_cancel_of_pending_jobs_removes_them(self, broker: Broker, timeline: Timeline) -> None:
        queued, scheduled = envelope(), envelope(eta=timeline.now + timeline.span(2))
        broker.enqueue([queued, scheduled])
        assert broker.cancel(queued.id) is JobStatus.CANCELLED
        assert broker.cancel(scheduled.id) is JobStatus.CANCELLED
        timeline.advance(3)
        assert fetch(broker) == []
        assert [status(broker, e.id) for e in (queued, scheduled)] == [JobStatus.CANCELLED] * 2
        record = broker.wait(queued.id, BLOCK)  # terminal: no waiting
        assert record is not None
        assert record.status is JobStatus.CANCELLED

    def test_cancel_of_a_running_job_is_seen_at_renewal(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        d = fetch_one(broker)
        assert broker.cancel(env.id) is JobStatus.RUNNING
        assert broker.renew([d], LONG) == [LeaseState.CANCELLED]
        assert finish(broker, d, JobStatus.CANCELLED, result=None, reason="cancelled")
        assert status(broker, env.id) is JobStatus.CANCELLED

    def test_cancel_of_a_running_job_survives_its_worker_dying(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        env = envelope()
        broker.enqueue([env])
        fetch_one(broker, lease=timeline.span(5))
        broker.cancel(env.id)
        timeline.advance(6)  # the worker died before its next renewal
        self._assert_not_run_uncancelled(broker, env.id)

    def test_cancel_of_a_running_job_survives_its_release(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        d = fetch_one(broker)
        broker.cancel(env.id)
        broker.release([d])  # a graceful stop, before the next renewal
        self._assert_not_run_uncancelled(broker, env.id)

    def _assert_not_run_uncancelled(self, broker: Broker, job_id: str) -> None:
        # Either the job is not handed out again, or its new worker is told at once.
        again = fetch(broker)
        if again:
            assert broker.renew(again, LONG) == [LeaseState.CANCELLED]
        else:
            assert status(broker, job_id) is JobStatus.CANCELLED

    def test_cancel_of_an_unknown_job_raises(self, broker: Broker) -> None:
        with pytest.raises(JobNotFound):
            broker.cancel(new_job_id())

    # -- get and wait ----------------------------------------------------------------------

    def test_get_answers_none_for_unknown_ids(self, broker: Broker) -> None:
        a, b = envelope(), envelope()
        broker.enqueue([a, b])
        records = broker.get([a.id, new_job_id(), b.id])
        assert [r.id if r else None for r in records] == [a.id, None, b.id]

    def test_wait_for_an_unknown_job_raises(self, broker: Broker) -> None:
        with pytest.raises(JobNotFound):
            broker.wait(new_job_id(), 0.1)

    def test_wait_returns_none_after_its_timeout(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        start = time.monotonic()
        assert broker.wait(env.id, 0.2) is None
        assert 0.1 <= time.monotonic() - start < BLOCK

    def test_wait_wakes_promptly_when_another_thread_finishes(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        d = fetch_one(broker)
        waiter = _Background(lambda: broker.wait(env.id, BLOCK))
        time.sleep(0.1)
        finished_at = time.monotonic()
        assert finish(broker, d, result=b"done")
        record = waiter.join()
        assert waiter.returned_at - finished_at < PROMPT
        assert record is not None
        assert (record.status, record.result) == (JobStatus.SUCCEEDED, b"done")

    def test_wait_returns_at_once_for_a_finished_job(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        assert finish(broker, fetch_one(broker), JobStatus.FAILED, result=b"err", reason="x")
        start = time.monotonic()
        record = broker.wait(env.id, BLOCK)
        assert time.monotonic() - start < PROMPT
        assert record is not None
        assert (record.status, record.result) == (JobStatus.FAILED, b"err")

    def test_wait_async_waits_like_wait(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        assert finish(broker, fetch_one(broker), result=b"async")
        record = asyncio.run(broker.wait_async(env.id, BLOCK))
        assert record is not None
        assert record.result == b"async"

    # -- unique keys -----------------------------------------------------------------------

    def test_unique_key_deduplicates_while_pending(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        first, dup_queued = envelope(key="report:1"), envelope(key="report:1")
        assert broker.enqueue([first]) == [first.id]
        assert broker.enqueue([dup_queued]) == [first.id]
        d = fetch_one(broker)
        dup_running = envelope(key="report:1")
        assert broker.enqueue([dup_running]) == [first.id]
        retry = Envelope(first.id, first.queue, b"retry", eta=timeline.now + timeline.span(5))
        assert finish(broker, d, JobStatus.SCHEDULED, result=None, retry=retry)
        dup_scheduled = envelope(key="report:1")
        assert broker.enqueue([dup_scheduled]) == [first.id]
        dups = [dup_queued.id, dup_running.id, dup_scheduled.id]
        assert broker.get(dups) == [None, None, None]  # nothing written
        timeline.advance(6)
        assert [x.id for x in fetch(broker)] == [first.id]

    def test_unique_key_deduplicates_within_one_batch(self, broker: Broker) -> None:
        a, b, other = envelope(key="k"), envelope(key="k"), envelope(key="other")
        assert broker.enqueue([a, b, other]) == [a.id, a.id, other.id]
        assert broker.get([b.id]) == [None]
        assert {d.id for d in fetch(broker)} == {a.id, other.id}

    def test_unique_key_is_free_again_once_the_job_is_done(self, broker: Broker) -> None:
        first = envelope(key="report:2")
        broker.enqueue([first])
        assert finish(broker, fetch_one(broker))
        second = envelope(key="report:2")
        assert broker.enqueue([second]) == [second.id]
        assert status(broker, second.id) is JobStatus.QUEUED
        assert broker.cancel(second.id) is JobStatus.CANCELLED
        third = envelope(key="report:2")
        assert broker.enqueue([third]) == [third.id]
        assert [d.id for d in fetch(broker)] == [third.id]

    # -- operations ------------------------------------------------------------------------

    def test_purge_removes_queued_and_scheduled_jobs_only(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        running, failed = envelope("doomed"), envelope("doomed")
        broker.enqueue([running, failed])
        d_running, d_failed = fetch(broker, ["doomed"], count=1), fetch(broker, ["doomed"])
        assert finish(broker, d_failed[0], JobStatus.FAILED, reason="kept")
        queued = [envelope("doomed"), envelope("doomed", priority=9)]
        scheduled = envelope("doomed", eta=timeline.now + timeline.span(2))
        bystander = envelope("spared")
        broker.enqueue([*queued, scheduled, bystander])

        assert broker.purge("doomed") == 3
        assert broker.get([e.id for e in (*queued, scheduled)]) == [None, None, None]
        timeline.advance(3)
        assert fetch(broker, ["doomed"]) == []
        assert status(broker, running.id) is JobStatus.RUNNING
        assert finish(broker, d_running[0])
        assert [e.id for e in broker.entries(JobStatus.FAILED, "doomed", 10)] == [failed.id]
        assert [d.id for d in fetch(broker, ["spared"])] == [bystander.id]
        assert broker.purge("doomed") == 0

    def test_stats_count_jobs_per_status_per_queue(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        broker.enqueue([envelope("qa") for _ in range(4)])
        _running, ok, failed, dead = fetch(broker, ["qa"])
        assert finish(broker, ok)
        assert finish(broker, failed, JobStatus.FAILED, reason="f")
        assert finish(broker, dead, JobStatus.DEAD, reason="d")
        broker.enqueue([envelope("qa"), envelope("qa", priority=9), envelope("qb")])
        broker.enqueue([envelope("qa", eta=timeline.now + timeline.span(10))])

        stats = {s.queue: s for s in broker.stats()}
        assert stats["qa"] == QueueStats(
            "qa", queued=2, scheduled=1, running=1, failed=1, dead=1, succeeded=1
        )
        assert stats["qb"] == QueueStats("qb", queued=1)

    def test_heartbeat_announces_a_worker_for_its_ttl(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        broker.heartbeat(worker_info("w1", timeline.now), timeline.span(5))
        [seen] = broker.workers()
        assert (seen.id, seen.host, seen.pid, seen.queues, seen.concurrency, seen.pool) == (
            "w1",
            "host-1",
            4242,
            ["default", "images"],
            8,
            "threads",
        )
        timeline.advance(3)
        broker.heartbeat(worker_info("w1", timeline.now), timeline.span(5))
        timeline.advance(3)  # past the first announcement, inside the second
        assert [w.id for w in broker.workers()] == ["w1"]
        timeline.advance(3)
        assert broker.workers() == []

    def test_forget_worker_removes_its_announcement(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        for worker_id in ("w1", "w2"):
            broker.heartbeat(worker_info(worker_id, timeline.now), LONG)
        broker.forget_worker("w1")
        assert [w.id for w in broker.workers()] == ["w2"]
        broker.forget_worker("never-seen")
        assert [w.id for w in broker.workers()] == ["w2"]

    # -- concurrency -----------------------------------------------------------------------

    def test_many_consumers_get_every_job_exactly_once(self, broker: Broker) -> None:
        total, n_threads = 2000, 8
        envs = [envelope() for _ in range(total)]
        for i in range(0, total, 500):
            broker.enqueue(envs[i : i + 500])
        done = [0]
        mutex = threading.Lock()
        deadline = time.monotonic() + 30.0

        def consume(n: int) -> list[Delivery]:
            got: list[Delivery] = []
            while time.monotonic() < deadline:
                batch = fetch(broker, count=20, block=0.05, consumer=f"consumer-{n}")
                if not batch:
                    with mutex:
                        if done[0] >= total:
                            return got
                    continue
                got += batch
                oks = broker.finish([Finish(d, JobStatus.SUCCEEDED, b"ok") for d in batch])
                assert oks == [True] * len(batch)
                with mutex:
                    done[0] += len(batch)
            return got

        consumers = [_Background(partial(consume, n)) for n in range(n_threads)]
        deliveries = [d for c in consumers for d in c.join(timeout=40.0)]
        times = Counter(d.id for d in deliveries)
        assert sorted(times.values()) == [1] * total
        assert set(times) == {e.id for e in envs}
        assert {d.deliveries for d in deliveries} == {1}
        statuses = Counter(r.status if r else None for r in broker.get([e.id for e in envs]))
        assert statuses == {JobStatus.SUCCEEDED: total}


class KeyValueConformance:
    """The ``KeyValue`` port's contract (see ``conveyor.stores._port``), on ``broker.kv``."""

    real_time_unit: ClassVar[float] = 0.1

    @pytest.fixture
    def timeline(self, clock: FakeClock | None) -> Timeline:
        return Timeline(clock, self.real_time_unit)

    @pytest.fixture
    def kv(self, broker: Broker) -> KeyValue:
        """The store under test; override to check a store that is not a broker's."""
        return broker.kv

    # -- get, set, delete ------------------------------------------------------------------

    def test_set_then_get(self, kv: KeyValue) -> None:
        assert kv.get("absent") is None
        assert kv.set("k", b"\x00\xffbinary")
        assert kv.get("k") == b"\x00\xffbinary"
        assert kv.set("k", b"second")
        assert kv.get("k") == b"second"
        assert kv.set("empty", b"")
        assert kv.get("empty") == b""
        assert kv.get("K") is None  # keys are case-sensitive

    def test_value_expires_after_its_ttl(self, kv: KeyValue, timeline: Timeline) -> None:
        assert kv.set("k", b"v", ttl=timeline.span(5))
        left = kv.ttl("k")
        assert left is not None
        assert 0 < left <= timeline.span(5)
        timeline.advance(3)
        assert kv.get("k") == b"v"
        timeline.advance(3)
        assert kv.get("k") is None
        assert kv.ttl("k") is None

    def test_ttl_is_none_without_expiry(self, kv: KeyValue, timeline: Timeline) -> None:
        assert kv.ttl("absent") is None
        kv.set("k", b"v", ttl=timeline.span(5))
        kv.set("k", b"v2")  # a plain set stores without expiry
        assert kv.ttl("k") is None
        timeline.advance(6)
        assert kv.get("k") == b"v2"

    def test_set_nx_writes_only_an_absent_key(self, kv: KeyValue, timeline: Timeline) -> None:
        assert kv.set("k", b"first", ttl=timeline.span(5), nx=True)
        assert not kv.set("k", b"second", nx=True)
        assert kv.get("k") == b"first"
        timeline.advance(6)
        assert kv.set("k", b"third", nx=True)
        assert kv.get("k") == b"third"

    def test_delete(self, kv: KeyValue, timeline: Timeline) -> None:
        kv.set("k", b"v")
        assert kv.delete("k")
        assert kv.get("k") is None
        assert not kv.delete("k")
        kv.set("short", b"v", ttl=timeline.span(1))
        timeline.advance(2)
        assert not kv.delete("short")  # expired counts as absent

    # -- counters and transactions ---------------------------------------------------------

    def test_incr_counts_with_a_ttl_set_on_create(self, kv: KeyValue, timeline: Timeline) -> None:
        assert kv.incr("n", ttl=timeline.span(5)) == 1
        assert kv.incr("n", 10) == 11
        assert kv.incr("n", -3) == 8
        assert kv.get("n") == b"8"
        timeline.advance(3)
        assert kv.incr("n", 1, ttl=timeline.span(5)) == 9  # does not push the expiry back
        left = kv.ttl("n")
        assert left is not None
        assert left <= timeline.span(2)
        timeline.advance(3)
        assert kv.get("n") is None
        assert kv.incr("n", 5) == 5
        assert kv.ttl("n") is None

    def test_update_writes_and_returns_the_new_value(
        self, kv: KeyValue, timeline: Timeline
    ) -> None:
        seen: list[bytes | None] = []

        def append_x(old: bytes | None) -> bytes:
            seen.append(old)
            return (old or b"") + b"x"

        assert kv.update("k", append_x) == b"x"
        assert kv.update("k", append_x, ttl=timeline.span(5)) == b"xx"
        assert seen[-2:] == [None, b"x"]
        assert kv.get("k") == b"xx"
        left = kv.ttl("k")
        assert left is not None
        assert 0 < left <= timeline.span(5)

    def test_update_returning_none_deletes(self, kv: KeyValue) -> None:
        kv.set("k", b"v")
        assert kv.update("k", lambda old: None) is None
        assert kv.get("k") is None
        assert kv.update("absent", lambda old: None) is None
        assert kv.get("absent") is None

    def test_update_does_not_lose_a_concurrent_write(self, kv: KeyValue) -> None:
        kv.set("n", b"0")
        writers: list[_Background[int]] = []
        calls: list[bytes | None] = []

        def plus_one(old: bytes | None) -> bytes:
            calls.append(old)
            if not writers:
                writers.append(_Background(lambda: kv.incr("n", 100)))
                # An optimistic store lets the write land now and must then run fn again;
                # one that locks through fn makes the writer wait: give it time to try.
                time.sleep(0.2)
            return str(int(old or b"0") + 1).encode()

        kv.update("n", plus_one)
        writers[0].join()
        assert calls[0] == b"0"
        assert kv.get("n") == b"101"

    def test_update_loses_nothing_under_threads(self, kv: KeyValue) -> None:
        def plus_one(old: bytes | None) -> bytes:
            return str(int(old or b"0") + 1).encode()

        def work() -> None:
            for _ in range(50):
                kv.update("counter", plus_one)

        workers = [_Background(work) for _ in range(8)]
        for w in workers:
            w.join(timeout=30.0)
        assert kv.get("counter") == b"400"

    # -- locks -----------------------------------------------------------------------------

    def test_lock_is_exclusive(self, kv: KeyValue) -> None:
        fence = kv.lock_acquire("invoice:42", "token-a", LONG)
        assert isinstance(fence, int)
        assert kv.lock_acquire("invoice:42", "token-b", LONG) is None
        assert isinstance(kv.lock_acquire("invoice:43", "token-b", LONG), int)

    def test_lock_release_and_extend_need_the_holders_token(
        self, kv: KeyValue, timeline: Timeline
    ) -> None:
        first = kv.lock_acquire("l", "token-a", timeline.span(5))
        assert first is not None
        assert not kv.lock_release("l", "token-b")
        assert not kv.lock_extend("l", "token-b", LONG)
        assert kv.lock_acquire("l", "token-b", LONG) is None  # still held by a
        timeline.advance(3)
        assert kv.lock_extend("l", "token-a", timeline.span(5))
        timeline.advance(3)  # past the first ttl, inside the extended one
        assert kv.lock_acquire("l", "token-b", LONG) is None
        assert kv.lock_release("l", "token-a")
        assert not kv.lock_release("l", "token-a")
        second = kv.lock_acquire("l", "token-b", LONG)
        assert second is not None
        assert second > first

    def test_lock_fences_grow_with_every_grant(self, kv: KeyValue) -> None:
        fences: list[int] = []
        for i in range(5):
            fence = kv.lock_acquire("l", f"token-{i}", LONG)
            assert fence is not None
            fences.append(fence)
            assert kv.lock_release("l", f"token-{i}")
        assert fences == sorted(set(fences))

    def test_lock_expires_after_its_ttl(self, kv: KeyValue, timeline: Timeline) -> None:
        first = kv.lock_acquire("l", "token-a", timeline.span(5))
        assert first is not None
        timeline.advance(6)  # the holder died
        second = kv.lock_acquire("l", "token-b", LONG)
        assert second is not None
        assert second > first
        assert not kv.lock_extend("l", "token-a", LONG)
        assert not kv.lock_release("l", "token-a")
        assert kv.lock_acquire("l", "token-a", LONG) is None
        assert kv.lock_release("l", "token-b")

    # -- names -----------------------------------------------------------------------------

    @pytest.mark.parametrize("key", ["", "new\nline", "nul\x00", "del\x7f", "x" * 513])
    def test_bad_keys_are_refused(self, kv: KeyValue, key: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: kv.get(key),
            lambda: kv.set(key, b"v"),
            lambda: kv.delete(key),
            lambda: kv.incr(key),
            lambda: kv.ttl(key),
            lambda: kv.update(key, lambda old: b"v"),
            lambda: kv.lock_acquire(key, "token", LONG),
            lambda: kv.lock_release(key, "token"),
            lambda: kv.lock_extend(key, "token", LONG),
        ]
        for call in calls:
            with pytest.raises(InvalidName):
                call()

    def test_long_printable_keys_are_accepted(self, kv: KeyValue) -> None:
        key = "k:é/ü " + "x" * 506
        assert len(key) == 512
        assert kv.set(key, b"v")
        assert kv.get(key) == b"v"
