"""The ``Broker`` contract's cancel, get, wait and unique-key tests, a part of
``BrokerConformance``."""

from __future__ import annotations

import asyncio
import time

import pytest

from ..._errors import JobNotFound
from ..._message import Envelope, JobStatus, new_job_id
from ...brokers._port import Broker, Finish, LeaseState
from ._helpers import (
    BLOCK,
    LONG,
    PROMPT,
    Timeline,
    _Background,
    envelope,
    fetch,
    fetch_one,
    finish,
    status,
)


class _CancelWaitTests:
    """Cancel, get and wait, unique keys."""

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

    def test_many_async_waits_leave_the_loop_free_to_enqueue(self, broker: Broker) -> None:
        # A wait that held a thread of the loop's default executor (the enqueues' too), or
        # a pooled connection, for as long as its job ran: with a hundred of them waiting,
        # the loop's enqueue waited seconds, or failed.
        envs = [envelope() for _ in range(100)]
        broker.enqueue(envs)

        async def main() -> None:
            waits = [asyncio.ensure_future(broker.wait_async(e.id, 10 * BLOCK)) for e in envs]
            await asyncio.sleep(0.2)  # every one waiting
            started = time.monotonic()
            await asyncio.wait_for(broker.enqueue_async([envelope()]), 10 * BLOCK)
            # (It took seconds: the waits' one-second turns ahead of it in the executor.)
            assert time.monotonic() - started < 3 * BLOCK
            left = {e.id for e in envs}
            while left:  # a sharded broker hands out a shard's jobs at a time
                deliveries = [d for d in fetch(broker, count=len(envs)) if d.id in left]
                assert deliveries, f"{len(left)} job(s) were not handed out"
                outcomes = [Finish(d, JobStatus.SUCCEEDED, b"r", LONG) for d in deliveries]
                assert all(broker.finish(outcomes))
                left -= {d.id for d in deliveries}
            records = await asyncio.wait_for(asyncio.gather(*waits), 10 * BLOCK)
            assert [r.status if r else None for r in records] == [JobStatus.SUCCEEDED] * len(envs)

        asyncio.run(main())

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
