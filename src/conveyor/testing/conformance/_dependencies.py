"""The dependency part of the ``Broker`` contract: ``DependencyConformance``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import ClassVar

import msgspec
import pytest

from ..._clock import FakeClock
from ..._errors import DependencyNotFound, JobNotFound, ValidationError
from ..._message import Delivery, Envelope, JobStatus, new_job_id
from ...brokers._port import Broker
from ._helpers import Timeline, dependent, envelope, fetch, fetch_one, finish, minting, status


class DependencyConformance:
    """``Envelope.depends_on``: the dependency part of the ``Broker`` contract.

    A job waits (``scheduled``, parked) until every dependency that had not ended at its
    enqueue has become terminal; the broker releases it whatever they ended as."""

    real_time_unit: ClassVar[float] = 0.1

    @pytest.fixture(autouse=True)
    def _minting(self, broker: Broker) -> Iterator[None]:
        """The helpers make ids as the app does, with the broker's ``new_job_id``."""
        with minting(broker):
            yield

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
        assert [status(broker, e.id) for e in jobs[1:]] == [JobStatus.SCHEDULED] * (len(jobs) - 1)
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
