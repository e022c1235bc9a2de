"""The ``Broker`` contract's ``requeue`` tests, a part of ``BrokerConformance``."""

from __future__ import annotations

from ..._message import Envelope, JobStatus, new_job_id
from ...brokers._port import REQUEUEABLE, Broker
from ._helpers import LONG, Timeline, dependent, envelope, fetch, fetch_one, finish, status


def _ended(broker: Broker, *how: JobStatus, key: str | None = None) -> list[Envelope]:
    """Jobs that ended as ``how`` says, one after the other (cancelled ones before they ran)."""
    envs = [envelope(key=key) for _ in how]
    for env, s in zip(envs, how, strict=True):
        broker.enqueue([env])
        if s is JobStatus.CANCELLED:
            assert broker.cancel(env.id) is JobStatus.CANCELLED
        else:
            assert finish(broker, fetch_one(broker), s, reason=f"{s} on purpose")
    return envs


class _RequeueTests:
    """Failed, dead and cancelled jobs back on their queue, afresh; everything else refused."""

    def test_requeue_puts_failed_dead_and_cancelled_jobs_back_afresh(self, broker: Broker) -> None:
        failed, dead, cancelled = _ended(
            broker, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED
        )
        items = [(e.id, b"again " + e.id.encode()) for e in (failed, dead, cancelled)]
        assert broker.requeue(items) == [failed.id, dead.id, cancelled.id]
        for e in (failed, dead, cancelled):
            [record] = broker.get([e.id])
            assert record is not None
            assert (record.status, record.result, record.reason, record.deliveries) == (
                JobStatus.QUEUED,
                None,
                "",
                0,
            )
            assert broker.payload(e.id) == b"again " + e.id.encode()
        for s in (JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED):
            assert broker.entries(s, None, 10) == []
        # At the back of the queue, in the order requeued; deliveries counted anew.
        got = fetch(broker)
        assert [(d.id, d.payload, d.deliveries) for d in got] == [(i, p, 1) for i, p in items]
        assert broker.wait(failed.id, 0.05) is None  # pending again: nothing to wait for

    def test_requeue_puts_back_the_requeueable_statuses_only_whatever_the_status(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        """One job in every status (and the pending ones in each of their forms): only
        failed, dead and cancelled ones go back; the others, and an unknown id, are left
        exactly as they were, with None."""
        queued, parked_on, running, cancelling = envelope(), envelope(), envelope(), envelope()
        ended = {s: envelope() for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD)}
        broker.enqueue([*ended.values(), running, cancelling])
        for s, d in zip(ended, fetch(broker, count=len(ended)), strict=True):  # FIFO
            assert finish(broker, d, s, reason=f"{s} on purpose")
        assert {d.id for d in fetch(broker)} == {running.id, cancelling.id}
        assert broker.cancel(cancelling.id) is JobStatus.RUNNING  # its worker is told to stop
        cancelled, scheduled = envelope(), envelope(eta=timeline.now + LONG)
        parked = dependent(parked_on.id)
        broker.enqueue([queued, scheduled, cancelled, parked_on, parked])
        assert broker.cancel(cancelled.id) is JobStatus.CANCELLED
        by_status = {
            JobStatus.QUEUED: [queued, parked_on],
            JobStatus.SCHEDULED: [scheduled, parked],
            JobStatus.RUNNING: [running, cancelling],
            JobStatus.CANCELLED: [cancelled],
            **{s: [e] for s, e in ended.items()},
        }
        assert set(by_status) == set(JobStatus), "a status this test does not cover"
        jobs = [e for envs in by_status.values() for e in envs]
        assert [status(broker, e.id) for e in jobs] == [
            s for s, envs in by_status.items() for _ in envs
        ]
        pending = [e for s, envs in by_status.items() if s not in REQUEUEABLE for e in envs]
        before = [(broker.get([e.id]), broker.payload(e.id)) for e in pending]
        items = [(e.id, b"again") for e in jobs] + [(new_job_id(), b"unknown")]
        expected = [
            e.id if s in REQUEUEABLE else None for s, envs in by_status.items() for e in envs
        ]
        assert broker.requeue(items) == [*expected, None]
        assert [(broker.get([e.id]), broker.payload(e.id)) for e in pending] == before
        for s in REQUEUEABLE:
            [e] = by_status[s]
            assert (status(broker, e.id), broker.payload(e.id)) == (JobStatus.QUEUED, b"again")
        assert broker.requeue([]) == []

    def test_a_job_is_requeued_once_however_often_it_is_named(self, broker: Broker) -> None:
        [failed] = _ended(broker, JobStatus.FAILED)
        assert broker.requeue([(failed.id, b"one"), (failed.id, b"two")]) == [failed.id, None]
        assert [(d.id, d.payload) for d in fetch(broker)] == [(failed.id, b"one")]

    def test_requeue_takes_the_unique_key_again_unless_a_pending_job_holds_it(
        self, broker: Broker
    ) -> None:
        [first] = _ended(broker, JobStatus.FAILED, key="report:monday")
        newer = envelope(key="report:monday")
        assert broker.enqueue([newer]) == [newer.id]  # the key was free: first ended
        assert broker.requeue([(first.id, b"again")]) == [newer.id]  # deduplicated
        assert status(broker, first.id) is JobStatus.FAILED
        assert finish(broker, fetch_one(broker))  # newer
        assert broker.requeue([(first.id, b"again")]) == [first.id]
        later = envelope(key="report:monday")
        assert broker.enqueue([later]) == [first.id]  # first holds the key again
        assert [d.id for d in fetch(broker)] == [first.id]

    def test_a_requeued_job_waits_again_for_a_pending_dependency(self, broker: Broker) -> None:
        parent = envelope()
        child = dependent(parent.id)
        broker.enqueue([parent, child])
        assert broker.cancel(child.id) is JobStatus.CANCELLED  # while it waited
        assert broker.requeue([(child.id, b"again")]) == [child.id]
        assert status(broker, child.id) is JobStatus.SCHEDULED  # parent is still queued
        d = fetch_one(broker)
        assert d.id == parent.id
        assert fetch(broker) == []
        assert finish(broker, d, JobStatus.FAILED, reason="parent failed")
        assert [(c.id, c.payload) for c in fetch(broker)] == [(child.id, b"again")]

    def test_a_requeued_job_is_waited_for_by_new_dependents(self, broker: Broker) -> None:
        [parent] = _ended(broker, JobStatus.FAILED)
        assert broker.requeue([(parent.id, b"again")]) == [parent.id]
        child = dependent(parent.id)
        broker.enqueue([child])
        assert status(broker, child.id) is JobStatus.SCHEDULED
        d = fetch_one(broker)
        assert d.id == parent.id
        assert finish(broker, d)
        assert [c.id for c in fetch(broker)] == [child.id]

    def test_requeue_clears_what_the_last_run_left(self, broker: Broker) -> None:
        env = envelope()
        broker.enqueue([env])
        d = fetch_one(broker)
        assert broker.progress(d, 0.5, "half way")
        assert finish(broker, d, JobStatus.FAILED, result=b"error", reason="ValueError: no")
        assert broker.requeue([(env.id, b"again")]) == [env.id]
        [record] = broker.get([env.id])
        assert record is not None
        assert (record.result, record.progress, record.progress_note, record.reason) == (
            None,
            None,
            None,
            "",
        )
