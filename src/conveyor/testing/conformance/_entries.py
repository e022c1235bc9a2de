"""The ``Broker`` contract's listing tests (``entries`` of every status, a page at a time)
and what ``get`` says of deliveries and reasons, a part of ``BrokerConformance``."""

from __future__ import annotations

import pytest

from ..._errors import ConfigurationError
from ..._message import DEFAULT_QUEUE, Envelope, JobEntry, JobStatus
from ...brokers._port import CANCELLED_PENDING, CANCELLED_WORKER_STOPPED, PARKED, Broker, Finish
from ._helpers import (
    LONG,
    Timeline,
    by_shard,
    dependent,
    envelope,
    fetch,
    fetch_one,
    finish,
    mint,
)


def _ids(entries: list[JobEntry]) -> list[str]:
    return [e.id for e in entries]


def _pages(broker: Broker, status: JobStatus, queue: str | None, size: int) -> list[str]:
    """Every job of a status, read ``size`` at a time."""
    found: list[str] = []
    while page := broker.entries(status, queue, size, len(found)):
        assert len(page) <= size
        found += _ids(page)
    return found


class _EntriesTests:
    """``entries`` of every status, in its order and by pages; deliveries and reasons."""

    def test_entries_list_every_status_with_its_payload(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        jobs = {s: envelope("listed") for s in JobStatus}
        jobs[JobStatus.SCHEDULED] = envelope("listed", eta=timeline.now + LONG)
        ran = [JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD]
        broker.enqueue([jobs[s] for s in ran])  # first in line: fetched below
        rest = [JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.CANCELLED]
        broker.enqueue([*(jobs[s] for s in rest), envelope("elsewhere")])
        assert broker.cancel(jobs[JobStatus.CANCELLED].id) is JobStatus.CANCELLED
        by_id = {d.id: d for d in fetch(broker, ["listed"], count=4)}
        assert set(by_id) == {jobs[s].id for s in ran}
        outcomes = [Finish(by_id[jobs[s].id], s, b"r", LONG, reason=f"{s}!") for s in ran[1:]]
        assert broker.finish(outcomes) == [True] * 3

        for s in JobStatus:
            [entry] = broker.entries(s, "listed", 10)
            want = jobs[s]
            assert (entry.id, entry.queue, entry.status) == (want.id, "listed", s)
            # A succeeded job keeps its result; an adapter may drop its payload then.
            kept = (want.payload, b"") if s is JobStatus.SUCCEEDED else (want.payload,)
            assert entry.payload in kept, s
            assert entry.at > 0
        assert broker.entries(JobStatus.FAILED, "listed", 10)[0].reason == "failed!"
        assert broker.entries(JobStatus.CANCELLED, "listed", 10)[0].reason == CANCELLED_PENDING
        assert broker.entries(JobStatus.QUEUED, "nowhere", 10) == []
        assert len(broker.entries(JobStatus.QUEUED, None, 10)) == 2  # both queues

    def test_queued_entries_come_in_the_order_fetch_hands_them_out(self, broker: Broker) -> None:
        order = [("qa", 0), ("qb", 5), ("qa", 9), ("qb", 0), ("qa", 5), ("qb", 9), ("qa", 0)]
        for queue, priority in order:  # one call each: first in line, first out
            broker.enqueue([envelope(queue, priority=priority)])
        listed = _ids(broker.entries(JobStatus.QUEUED, None, 100))
        assert _pages(broker, JobStatus.QUEUED, None, 3) == listed
        only_qa = _ids(broker.entries(JobStatus.QUEUED, "qa", 100))
        handed_out = [fetch_one(broker, ["qa", "qb"]).id for _ in order]
        assert by_shard(broker, listed) == by_shard(broker, handed_out)
        assert sorted(listed) == sorted(handed_out)
        in_qa = [i for i in handed_out if i in set(only_qa)]
        assert by_shard(broker, only_qa) == by_shard(broker, in_qa)
        assert len(only_qa) == 4

    def test_scheduled_entries_come_soonest_first_then_the_parked_ones(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        soon, sooner, later = (envelope(eta=timeline.now + LONG / n) for n in (2, 3, 1))
        parked = Envelope(mint(), DEFAULT_QUEUE, b"parked", eta=PARKED)
        broker.enqueue([soon, sooner, later, parked])
        waiting = dependent(soon.id)
        broker.enqueue([waiting])
        listed = _ids(broker.entries(JobStatus.SCHEDULED, DEFAULT_QUEUE, 10))
        assert listed == [sooner.id, soon.id, later.id, *sorted([parked.id, waiting.id])]
        assert _pages(broker, JobStatus.SCHEDULED, None, 2) == listed

    def test_ended_and_running_entries_come_newest_first_by_pages(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        broker.enqueue([envelope() for _ in range(7)])
        first, second, *together = fetch(broker, count=7)
        assert finish(broker, first, JobStatus.FAILED, reason="first")
        timeline.advance(1)
        assert finish(broker, second, JobStatus.FAILED, reason="second")
        timeline.advance(1)
        # Ended in one call (at one instant): ties go by id, highest first.
        outcomes = [Finish(d, JobStatus.FAILED, b"r", LONG, reason="together") for d in together]
        assert broker.finish(outcomes) == [True] * 5
        newest = sorted((d.id for d in together), reverse=True)
        listed = broker.entries(JobStatus.FAILED, None, 10)
        assert _ids(listed) == [*newest, second.id, first.id]
        assert [e.at for e in listed] == sorted((e.at for e in listed), reverse=True)
        assert _pages(broker, JobStatus.FAILED, None, 2) == _ids(listed)
        assert _pages(broker, JobStatus.FAILED, DEFAULT_QUEUE, 3) == _ids(listed)
        assert broker.entries(JobStatus.FAILED, None, 10, 7) == []
        assert _ids(broker.entries(JobStatus.FAILED, None, 1, 6)) == [first.id]

        broker.enqueue([envelope(), envelope()])
        older = fetch_one(broker)
        timeline.advance(1)
        newer = fetch_one(broker)
        assert _ids(broker.entries(JobStatus.RUNNING, None, 10)) == [newer.id, older.id]
        assert _pages(broker, JobStatus.RUNNING, None, 1) == [newer.id, older.id]

    def test_ended_entries_of_every_queue_come_newest_first_by_pages(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        """Jobs of three queues ended in four rounds, each round in one call (one instant):
        the list of every queue is newest first, ties by id across the queues, and reads
        the same whatever the page size or the page's offset."""
        queues = ["qa", "qb", "qc"]
        rounds: list[list[str]] = []
        for _ in range(4):
            broker.enqueue([envelope(q) for q in queues for _ in range(2)])
            got = fetch(broker, queues, count=6)
            assert broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r", LONG) for d in got])
            rounds.append(sorted((d.id for d in got), reverse=True))
            timeline.advance(1)
        newest = [i for ids in reversed(rounds) for i in ids]
        assert _ids(broker.entries(JobStatus.SUCCEEDED, None, 100)) == newest
        for size in (1, 5, 7):
            assert _pages(broker, JobStatus.SUCCEEDED, None, size) == newest
        for offset in (0, 5, 6, 13, 23):
            page = broker.entries(JobStatus.SUCCEEDED, None, 4, offset)
            assert _ids(page) == newest[offset : offset + 4]
        assert broker.entries(JobStatus.SUCCEEDED, None, 3, 24) == []
        of_qb = {e.id for e in broker.entries(JobStatus.SUCCEEDED, "qb", 100)}
        assert len(of_qb) == 8
        assert _pages(broker, JobStatus.SUCCEEDED, "qb", 3) == [i for i in newest if i in of_qb]

    @pytest.mark.parametrize(("limit", "offset"), [(0, 0), (-1, 0), (1, -1)])
    def test_entries_take_at_least_one_job_per_page(
        self, broker: Broker, limit: int, offset: int
    ) -> None:
        with pytest.raises(ConfigurationError):
            broker.entries(JobStatus.FAILED, None, limit, offset)

    # -- what get says ---------------------------------------------------------------------

    def test_records_count_deliveries_and_keep_the_reason(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        env = envelope()
        broker.enqueue([env])
        assert _record(broker, env.id) == (JobStatus.QUEUED, 0, "")
        fetch_one(broker, lease=timeline.span(5))
        assert _record(broker, env.id) == (JobStatus.RUNNING, 1, "")
        timeline.advance(6)  # its worker died: the next delivery counts
        again = fetch_one(broker)
        assert _record(broker, env.id) == (JobStatus.RUNNING, 2, "")
        assert finish(broker, again, JobStatus.DEAD, reason="poison: delivered 2 times")
        assert _record(broker, env.id) == (JobStatus.DEAD, 2, "poison: delivered 2 times")

    def test_a_cancel_leaves_its_reason(self, broker: Broker) -> None:
        taken, waiting = envelope(), envelope()
        broker.enqueue([taken, waiting])
        d = fetch_one(broker)
        assert d.id == taken.id
        broker.cancel(waiting.id)
        assert _record(broker, waiting.id) == (JobStatus.CANCELLED, 0, CANCELLED_PENDING)
        broker.cancel(taken.id)
        assert broker.release([d]) == [True]  # its worker stopped
        assert _record(broker, taken.id) == (
            JobStatus.CANCELLED,
            0,  # a release does not count as a delivery
            CANCELLED_WORKER_STOPPED,
        )
        assert {(e.id, e.reason) for e in broker.entries(JobStatus.CANCELLED, None, 10)} == {
            (waiting.id, CANCELLED_PENDING),
            (taken.id, CANCELLED_WORKER_STOPPED),
        }


def _record(broker: Broker, job_id: str) -> tuple[JobStatus, int, str]:
    [record] = broker.get([job_id])
    assert record is not None
    return record.status, record.deliveries, record.reason
