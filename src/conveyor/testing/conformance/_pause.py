"""The ``Broker`` contract's pause and resume tests, a part of ``BrokerConformance``."""

from __future__ import annotations

import time

import pytest

from ..._errors import InvalidName
from ..._message import DEFAULT_QUEUE, JobStatus, QueueStats
from ...brokers._port import Broker, LeaseState
from ._helpers import (
    BLOCK,
    PROMPT,
    Timeline,
    _Background,
    by_shard,
    envelope,
    fetch,
    finish,
    status,
)


class _PauseTests:
    """A paused queue keeps its jobs; resume hands them out, waking blocked fetches."""

    def test_a_paused_queue_hands_out_nothing_until_resumed(self, broker: Broker) -> None:
        first, bystander = envelope("qa"), envelope("qb")
        broker.enqueue([first, bystander])
        assert broker.paused() == []
        broker.pause("qa")
        broker.pause("qa")  # idempotent
        assert broker.paused() == ["qa"]
        assert [d.id for d in fetch(broker, ["qa", "qb"])] == [bystander.id]
        assert fetch(broker, ["qa"]) == []
        second = envelope("qa")
        broker.enqueue([second])  # enqueue goes on
        stats = {s.queue: s for s in broker.stats()}
        assert stats["qa"] == QueueStats("qa", queued=2, paused=True)
        assert stats["qb"] == QueueStats("qb", running=1)
        assert [status(broker, e.id) for e in (first, second)] == [JobStatus.QUEUED] * 2

        broker.resume("qa")
        broker.resume("qa")  # idempotent
        assert broker.paused() == []
        got = [d.id for d in fetch(broker, ["qa", "qb"])]
        assert by_shard(broker, got) == by_shard(broker, [first.id, second.id])
        assert not any(s.paused for s in broker.stats())

    def test_a_paused_queue_without_jobs_is_listed(self, broker: Broker) -> None:
        broker.pause("idle")
        broker.pause("also-idle")
        assert broker.paused() == ["also-idle", "idle"]
        assert broker.stats() == [
            QueueStats("also-idle", paused=True),
            QueueStats("idle", paused=True),
        ]
        broker.resume("idle")
        broker.resume("never-paused")
        assert broker.stats() == [QueueStats("also-idle", paused=True)]

    def test_pause_takes_a_valid_queue_name(self, broker: Broker) -> None:
        for call in (broker.pause, broker.resume):
            with pytest.raises(InvalidName):
                call("two words")

    def test_a_paused_queue_lets_running_jobs_end_and_keeps_the_rest_queued(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        ending, abandoned = envelope(), envelope()
        later = envelope(eta=timeline.now + timeline.span(5))
        broker.enqueue([ending, abandoned, later])
        d_ending, d_abandoned = fetch(broker, lease=timeline.span(5))
        broker.pause(DEFAULT_QUEUE)
        assert broker.renew([d_ending, d_abandoned], timeline.span(5)) == [LeaseState.OK] * 2
        assert finish(broker, d_ending)
        timeline.advance(6)  # the other's worker died; the delayed job is due
        assert fetch(broker) == []
        assert [status(broker, e.id) for e in (abandoned, later)] == [JobStatus.QUEUED] * 2
        broker.resume(DEFAULT_QUEUE)
        got = {(d.id, d.deliveries) for d in fetch(broker)}
        assert got == {(abandoned.id, 2), (later.id, 1)}

    @pytest.mark.parametrize("queues", [["qa"], ["qa", "qb"]], ids=["alone", "with-another"])
    def test_resume_wakes_a_fetch_blocked_on_the_paused_queue(
        self, broker: Broker, queues: list[str]
    ) -> None:
        broker.pause("qa")
        first = envelope("qa")
        broker.enqueue([first])
        waiter = _Background(lambda: fetch(broker, queues, block=BLOCK))
        time.sleep(0.1)
        second = envelope("qa")
        broker.enqueue([second])  # wakes the fetch, which finds the queue still paused
        time.sleep(0.1)
        resumed_at = time.monotonic()
        broker.resume("qa")
        got = waiter.join()
        assert waiter.returned_at >= resumed_at  # nothing was handed out before
        assert waiter.returned_at - resumed_at < PROMPT
        assert by_shard(broker, [d.id for d in got]) == by_shard(broker, [first.id, second.id])
