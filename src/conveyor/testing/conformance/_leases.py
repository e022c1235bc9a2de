"""The ``Broker`` contract's delay, lease, finish, result, release and progress tests, a part
of ``BrokerConformance``."""

from __future__ import annotations

import pytest

from ..._errors import JobNotFound
from ..._message import DEFAULT_QUEUE, Delivery, Envelope, JobStatus, new_job_id
from ...brokers._port import PARKED, Broker, Finish, LeaseState
from ._helpers import BLOCK, LONG, Timeline, envelope, fetch, fetch_one, finish, status


class _LeaseTests:
    """ETAs and promote, leases and renewal, fenced finish, results, retries, failed and dead
    jobs, release and progress."""

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
