"""The ``Broker`` contract's ``delete`` tests, a part of ``BrokerConformance``."""

from __future__ import annotations

import pytest

from ..._errors import DependencyNotFound, JobNotFound
from ..._message import JobStatus, new_job_id
from ...brokers._port import Broker, LeaseState
from ._helpers import (
    LONG,
    Timeline,
    _Background,
    dependent,
    envelope,
    fetch,
    fetch_one,
    finish,
    status,
)


class _DeleteTests:
    """Any job but a running one under a live lease deleted, record and result; pending ones
    (and running ones whose worker is gone) as purge takes them."""

    def test_delete_removes_a_job_in_every_status_but_running(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        ended = {s: envelope() for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD)}
        running = envelope()
        broker.enqueue([*ended.values(), running])
        for s, d in zip(ended, fetch(broker, count=len(ended)), strict=True):  # FIFO
            assert finish(broker, d, s, reason=f"{s} on purpose")
        d_running = fetch_one(broker)
        queued, cancelled, parked_on = envelope(), envelope(), envelope()
        scheduled = envelope(eta=timeline.now + timeline.span(2))
        parked = dependent(parked_on.id)
        broker.enqueue([queued, scheduled, cancelled, parked_on, parked])
        assert broker.cancel(cancelled.id) is JobStatus.CANCELLED
        doomed = {
            JobStatus.QUEUED: queued,
            JobStatus.SCHEDULED: scheduled,
            JobStatus.CANCELLED: cancelled,
            **ended,
        }
        ids = [e.id for e in doomed.values()]
        unknown = new_job_id()
        assert broker.delete([*ids, parked.id, running.id, unknown]) == [
            *doomed,
            JobStatus.SCHEDULED,
            None,  # running under a live lease: left as it is
            None,
        ]
        assert broker.get([*ids, parked.id]) == [None] * (len(ids) + 1)
        assert [broker.payload(i) for i in ids] == [None] * len(ids)
        listed = {e.id for s in JobStatus for e in broker.entries(s, None, 10)}
        assert listed == {parked_on.id, running.id}
        [stats] = broker.stats()
        assert (stats.queued, stats.scheduled, stats.running) == (1, 0, 1)  # parked_on, running
        assert stats.succeeded == stats.failed == stats.dead == stats.cancelled == 0
        # Neither is handed out, nor comes due; the running one is left to its worker.
        timeline.advance(3)
        assert [d.id for d in fetch(broker)] == [parked_on.id]
        assert status(broker, running.id) is JobStatus.RUNNING
        assert finish(broker, d_running)
        assert status(broker, running.id) is JobStatus.SUCCEEDED
        assert broker.delete([running.id, running.id]) == [JobStatus.SUCCEEDED, None]
        assert broker.delete([]) == []

    def test_a_running_job_is_left_as_it_is_even_while_cancelling(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        d = fetch_one(broker)
        assert broker.cancel(env.id) is JobStatus.RUNNING
        assert broker.delete([env.id]) == [None]
        assert broker.payload(env.id) == d.payload
        assert broker.renew([d], LONG) == [LeaseState.CANCELLED]  # still its worker's
        assert finish(broker, d, JobStatus.CANCELLED, reason="stopped")
        assert broker.delete([env.id]) == [JobStatus.CANCELLED]

    def test_a_running_job_whose_lease_expired_is_deleted(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        env = envelope(key="nightly")
        child = dependent(env.id, queue="b")
        broker.enqueue([env, child])
        d = fetch_one(broker, lease=timeline.span(2))
        assert broker.delete([env.id]) == [None]  # its worker's lease is live
        assert status(broker, env.id) is JobStatus.RUNNING
        timeline.advance(3)  # the worker is gone, and no fetch reclaimed the job yet
        assert broker.delete([env.id]) == [JobStatus.RUNNING]
        assert broker.get([env.id]) == [None] and broker.payload(env.id) is None
        # The fence holds: the dead worker's late calls find no record.
        assert broker.renew([d], LONG) == [LeaseState.LOST]
        assert not finish(broker, d)
        assert broker.get([env.id]) == [None]
        assert fetch(broker) == []  # not reclaimed either
        assert status(broker, child.id) is JobStatus.QUEUED  # counted down, as purge does
        again = envelope(key="nightly")
        assert broker.enqueue([again]) == [again.id]  # its unique key is free

    def test_delete_frees_a_pending_jobs_unique_key(self, broker: Broker) -> None:
        first = envelope(key="report:monday")
        assert broker.enqueue([first]) == [first.id]
        again = envelope(key="report:monday")
        assert broker.enqueue([again]) == [first.id]  # held
        assert broker.delete([first.id]) == [JobStatus.QUEUED]
        assert broker.enqueue([again]) == [again.id]
        assert [d.id for d in fetch(broker)] == [again.id]

    def test_a_deleted_dependency_releases_its_dependents(self, broker: Broker) -> None:
        a = envelope("a")
        b = dependent(a.id, queue="b")
        broker.enqueue([a, b])
        assert broker.delete([a.id]) == [JobStatus.QUEUED]
        assert status(broker, b.id) is JobStatus.QUEUED
        assert [d.id for d in fetch(broker, ["b"])] == [b.id]
        assert fetch(broker, ["a"]) == []

    def test_a_deleted_dependent_is_forgotten_by_its_dependencies(self, broker: Broker) -> None:
        a, other = envelope(), envelope("c")
        b = dependent(a.id, queue="b")
        broker.enqueue([a, other, b])
        assert broker.delete([b.id]) == [JobStatus.SCHEDULED]
        child = dependent(other.id, queue="b")
        broker.enqueue([child])
        d = fetch_one(broker)
        assert d.id == a.id
        assert finish(broker, d)
        assert fetch(broker, ["b"]) == []  # a's end releases nothing: b is gone
        assert status(broker, b.id) is None

    def test_a_deleted_ended_job_is_an_unknown_dependency(self, broker: Broker) -> None:
        a = envelope()
        broker.enqueue([a])
        assert finish(broker, fetch_one(broker))
        assert broker.delete([a.id]) == [JobStatus.SUCCEEDED]
        b = dependent(a.id)
        with pytest.raises(DependencyNotFound):  # as after its record expired
            broker.enqueue([b])
        assert status(broker, b.id) is None
        assert broker.enqueue([a]) == [a.id]  # the id is free: enqueued afresh
        assert status(broker, a.id) is JobStatus.QUEUED

    def test_a_deleted_ended_dependency_is_found_without_a_record(self, broker: Broker) -> None:
        a, b = envelope(), envelope()
        broker.enqueue([a, b])
        d_a, d_b = fetch(broker)  # FIFO
        c = dependent(a.id, b.id, queue="c")
        broker.enqueue([c])
        assert finish(broker, d_a)
        assert broker.delete([a.id]) == [JobStatus.SUCCEEDED]  # c still waits for b
        assert status(broker, c.id) is JobStatus.SCHEDULED
        assert finish(broker, d_b)
        assert [d.id for d in fetch(broker, ["c"])] == [c.id]  # released, as after a's TTL
        assert broker.get([a.id]) == [None]  # c's worker finds a without a record

    def test_a_waiter_learns_a_pending_job_was_deleted(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        waiting = _Background(lambda: broker.wait(env.id, 5.0))
        assert broker.wait(env.id, 0.2) is None  # the background one is waiting by now
        assert broker.delete([env.id]) == [JobStatus.QUEUED]
        with pytest.raises(JobNotFound, match="deleted"):
            waiting.join()
