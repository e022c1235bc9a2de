"""The ``Broker`` contract's operations and concurrency tests, a part of ``BrokerConformance``."""

from __future__ import annotations

import threading
import time
from collections import Counter
from functools import partial

import pytest

from ..._errors import JobNotFound
from ..._message import Delivery, JobStatus, QueueStats
from ...brokers._port import Broker, Finish
from ._helpers import LONG, Timeline, _Background, envelope, fetch, finish, status, worker_info


class _OperationsTests:
    """Purge, stats, worker announcements; many consumers at once."""

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

    def test_a_waiter_learns_at_once_its_job_was_purged(self, broker: Broker) -> None:
        env = envelope("doomed")
        broker.enqueue([env])
        waiting = _Background(lambda: broker.wait(env.id, 5.0))
        assert broker.wait(env.id, 0.2) is None  # the background one is waiting by now
        assert broker.purge("doomed") == 1
        purged_at = time.monotonic()
        with pytest.raises(JobNotFound, match="purged"):
            waiting.join()
        assert waiting.returned_at - purged_at < 1.0  # woken, not left to its next look

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
        info = worker_info("w1", timeline.now)
        broker.heartbeat(info, timeline.span(5))
        [seen] = broker.workers()
        # When it was seen (what `conveyor info` shows as "last seen"): what it was given,
        # read back as it was (compared with the clock after the calls, it failed on a
        # loaded machine that took longer than a unit over them).
        assert seen.seen_at == info.seen_at
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
