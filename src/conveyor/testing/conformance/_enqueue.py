"""The ``Broker`` contract's enqueue and fetch tests, a part of ``BrokerConformance``."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest

from ..._clock import FakeClock
from ..._message import DEFAULT_QUEUE, Envelope, JobStatus
from ...brokers._port import Broker
from ._helpers import BLOCK, PROMPT, _Background, envelope, fetch, fetch_one, finish, status


class _EnqueueTests:
    """Enqueue (ids, batches, idempotence) and fetch (order, queues, count, blocking)."""

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

    def test_a_blocked_fetch_returns_when_a_scheduled_job_comes_due(
        self, broker: Broker, clock: FakeClock | None
    ) -> None:
        # Its look says when the next scheduled job is due, and the fetch sleeps no longer:
        # one that said nothing started every delayed job (and retry) a whole block late.
        if clock is not None:
            pytest.skip("real time only: a fake clock's jump has no moment to wake at")
        env = envelope(eta=time.time() + 0.3)
        broker.enqueue([env])
        start = time.monotonic()
        assert [d.id for d in fetch(broker, block=3.0)] == [env.id]
        assert time.monotonic() - start < 0.3 + PROMPT

    def test_a_blocked_fetch_returns_a_job_scheduled_meanwhile_when_it_comes_due(
        self, broker: Broker, clock: FakeClock | None
    ) -> None:
        # A job scheduled while the fetch sleeps (an enqueue with delay=, a retry's backoff)
        # wakes it to learn the new due time: one that slept on started it up to a whole
        # block late (an idle worker's block is a second).
        if clock is not None:
            pytest.skip("real time only: a fake clock's jump has no moment to wake at")
        waiter = _Background(lambda: fetch(broker, block=3.0))
        time.sleep(0.1)
        env = envelope(eta=time.time() + 0.4)
        due = time.monotonic() + 0.4
        broker.enqueue([env])
        assert [d.id for d in waiter.join()] == [env.id]
        assert waiter.returned_at - due < PROMPT

    def test_a_blocked_fetch_takes_a_job_whose_lease_ran_out(
        self, broker: Broker, clock: FakeClock | None
    ) -> None:
        if clock is not None:
            pytest.skip("real time only: a fake clock's jump has no moment to wake at")
        env = envelope()
        broker.enqueue([env])
        assert [d.id for d in fetch(broker, lease=0.3)] == [env.id]
        start = time.monotonic()
        assert [d.id for d in fetch(broker, block=3.0)] == [env.id]
        assert time.monotonic() - start < 0.3 + PROMPT

    def test_blocked_fetch_wakes_when_another_thread_enqueues(self, broker: Broker) -> None:
        env = envelope()
        waiter = _Background(lambda: fetch(broker, block=BLOCK))
        time.sleep(0.1)
        enqueued_at = time.monotonic()
        broker.enqueue([env])
        assert [d.id for d in waiter.join()] == [env.id]
        assert waiter.returned_at - enqueued_at < PROMPT
