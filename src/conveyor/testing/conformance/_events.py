"""The ``Broker`` contract's event log tests, a part of ``BrokerConformance``."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from ..._errors import DependencyNotFound
from ..._message import Envelope, JobStatus, new_job_id
from ...brokers._port import EVENTS_SLACK, Broker, Finish
from ._helpers import (
    BLOCK,
    PROMPT,
    Timeline,
    _Background,
    by_shard,
    dependent,
    envelope,
    fetch,
    mint,
)


def _read_all(broker: Broker, after: str | None = None) -> list[tuple[str, bytes]]:
    """Every event after ``after``, a page at a time."""
    out: list[tuple[str, bytes]] = []
    while page := broker.read_events(after, 0.0, 64):
        out += page
        after = page[-1][0]
    return out


def _bodies(broker: Broker, after: str | None = None) -> list[bytes]:
    return [e for _, e in _read_all(broker, after)]


def _numbered(n: int, tag: str = "event") -> list[bytes]:
    return [f'{{"type":"{tag}","n":{i}}}'.encode() for i in range(n)]


class _EventsTests:
    """What is published is read back in order by any number of readers, from any cursor;
    the log is capped and drops its oldest events, never a job; the events riding on
    enqueue and finish are published with what they describe, and only then."""

    # -- the log ---------------------------------------------------------------------------

    def test_published_events_are_read_back_in_order_from_any_cursor(self, broker: Broker) -> None:
        events = _numbered(5)
        broker.publish(events[:2])
        broker.publish(events[2:])
        broker.publish([])  # nothing
        got = broker.read_events(None, 0.0, 100)
        assert [e for _, e in got] == events
        cursors = [c for c, _ in got]
        assert len(set(cursors)) == 5 and all(isinstance(c, str) for c in cursors)
        assert [e for _, e in broker.read_events(cursors[1], 0.0, 100)] == events[2:]
        assert [e for _, e in broker.read_events(None, 0.0, 2)] == events[:2]
        assert [e for _, e in broker.read_events(cursors[1], 0.0, 2)] == events[2:4]
        assert broker.read_events(cursors[-1], 0.0, 100) == []
        # Reading takes nothing out: a second reader sees the same.
        assert broker.read_events(None, 0.0, 100) == got

    def test_events_are_opaque_bytes(self, broker: Broker) -> None:
        odd = [b"\x00\xff not json", b"", b"{" * 3000]
        broker.publish(odd)
        assert _bodies(broker) == odd

    def test_reading_after_the_tail_gives_only_later_events(self, broker: Broker) -> None:
        tail = broker.events_tail()
        assert broker.read_events(tail, 0.0, 10) == []
        broker.publish([b"a"])
        assert _bodies(broker, tail) == [b"a"]
        newest = broker.events_tail()
        assert broker.read_events(newest, 0.0, 10) == []
        broker.publish([b"b", b"c"])
        assert _bodies(broker, newest) == [b"b", b"c"]
        assert _bodies(broker, tail) == [b"a", b"b", b"c"]

    def test_a_blocked_reader_wakes_when_an_event_is_published(self, broker: Broker) -> None:
        tail = broker.events_tail()
        reader = _Background(lambda: broker.read_events(tail, BLOCK, 10))
        time.sleep(0.1)
        published_at = time.monotonic()
        broker.publish([b"wake up"])
        assert [e for _, e in reader.join()] == [b"wake up"]
        assert reader.returned_at - published_at < PROMPT

    def test_a_reader_waits_at_most_its_block(self, broker: Broker) -> None:
        tail = broker.events_tail()
        started = time.monotonic()
        assert broker.read_events(tail, 0.2, 10) == []
        assert 0.15 <= time.monotonic() - started < 0.2 + PROMPT
        started = time.monotonic()
        assert broker.read_events(tail, 0.0, 10) == []  # no block: at once
        assert time.monotonic() - started < PROMPT

    def test_the_log_keeps_the_newest_events_and_drops_the_oldest(self, broker: Broker) -> None:
        broker.events_kept = 50
        events = _numbered(400)
        broker.publish(events[:1])
        first = broker.read_events(None, 0.0, 1)[0][0]
        for i in range(1, 295, 7):
            broker.publish(events[i : i + 7])
        for event in events[295:]:
            broker.publish([event])
        got = _bodies(broker)
        assert 50 <= len(got) < 50 + EVENTS_SLACK
        assert got == events[-len(got) :]  # the newest, in order, none missing
        # A cursor older than the oldest kept reads on from the oldest kept.
        assert _bodies(broker, first) == got

    def test_a_full_log_drops_events_never_jobs(self, broker: Broker) -> None:
        broker.events_kept = 10
        jobs = [envelope() for _ in range(30)]
        broker.enqueue(jobs, _numbered(30, "job.enqueued"))
        broker.publish(_numbered(300))
        assert sorted(d.id for d in fetch(broker)) == sorted(e.id for e in jobs)
        assert len(_bodies(broker)) < 10 + EVENTS_SLACK

    # -- events riding on enqueue ----------------------------------------------------------

    def test_enqueue_publishes_the_events_of_the_jobs_it_writes(self, broker: Broker) -> None:
        tail = broker.events_tail()
        a, b = envelope(), envelope(key="unique")
        assert broker.enqueue([a, b], [b"a", b"b"]) == [a.id, b.id]
        assert broker.enqueue([a], [b"a again"]) == [a.id]  # written already: no event
        held = envelope(key="unique")
        assert broker.enqueue([held], [b"held"]) == [b.id]  # deduplicated: no event
        c = envelope()
        assert broker.enqueue([c, c], [b"c", b"c twice"]) == [c.id, c.id]  # written once
        later = envelope(eta=time.time() + 3600)
        parked = Envelope(mint(), "default", b"steps", eta=float("inf"))
        broker.enqueue([later, parked], [b"later", b"parked"])
        jobs = {b"a": a.id, b"b": b.id, b"c": c.id, b"later": later.id, b"parked": parked.id}
        assert by_shard(broker, _bodies(broker, tail), jobs.__getitem__) == by_shard(
            broker, [b"a", b"b", b"c", b"later", b"parked"], jobs.__getitem__
        )

    def test_enqueue_async_publishes_them_too(self, broker: Broker) -> None:
        tail = broker.events_tail()
        a, b = envelope(), envelope()
        assert asyncio.run(broker.enqueue_async([a, b], [b"a", b"b"])) == [a.id, b.id]
        assert _bodies(broker, tail) == [b"a", b"b"]

    def test_without_events_nothing_is_written_to_the_log(self, broker: Broker) -> None:
        broker.enqueue([envelope(), envelope()])
        [d, e] = fetch(broker)
        broker.finish([Finish(d, JobStatus.SUCCEEDED, b"r"), Finish(e, JobStatus.FAILED, b"r")])
        broker.release([])
        assert broker.read_events(None, 0.0, 10) == []
        assert broker.events_tail() == broker.events_tail()

    def test_enqueue_takes_one_event_per_envelope(self, broker: Broker) -> None:
        with pytest.raises(ValueError, match="one event per envelope"):
            broker.enqueue([envelope(), envelope()], [b"only one"])
        assert broker.stats() == []
        assert broker.read_events(None, 0.0, 10) == []

    def test_a_refused_batch_publishes_nothing(self, broker: Broker) -> None:
        ok, refused = envelope(), dependent(new_job_id())
        with pytest.raises(DependencyNotFound):
            broker.enqueue([ok, refused], [b"ok", b"refused"])
        assert broker.read_events(None, 0.0, 10) == []

    # -- events riding on finish -----------------------------------------------------------

    def test_finish_publishes_its_events_then_those_of_the_outcomes_it_records(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        broker.enqueue([envelope(), envelope(), envelope()])
        first, second, third = fetch(broker)
        stale = msgspec.structs.replace(second, token="not-the-token")
        retry = Envelope(third.id, third.queue, b"again", eta=timeline.now + timeline.span(60))
        tail = broker.events_tail()
        outcomes = [
            Finish(first, JobStatus.SUCCEEDED, b"r", event=b"first succeeded"),
            Finish(stale, JobStatus.SUCCEEDED, b"r", event=b"refused"),
            Finish(third, JobStatus.SCHEDULED, retry=retry, event=b"third retried"),
            Finish(second, JobStatus.FAILED, b"r", reason="boom"),  # no event of its own
        ]
        assert broker.finish(outcomes, [b"started 1", b"started 2"]) == [True, False, True, True]
        assert _bodies(broker, tail) == [
            b"started 1",
            b"started 2",
            b"first succeeded",
            b"third retried",
        ]
        # A repeat by the same delivery is told it took effect, and publishes nothing again.
        tail = broker.events_tail()
        again = Finish(first, JobStatus.SUCCEEDED, b"r", event=b"first again")
        assert broker.finish([again]) == [True]
        assert broker.finish([], [b"alone"]) == []
        assert _bodies(broker, tail) == [b"alone"]

    def test_a_large_finish_publishes_every_event_in_order(self, broker: Broker) -> None:
        n = 450  # more than one script call's worth on Redis
        broker.enqueue([envelope() for _ in range(n)])
        deliveries = fetch(broker, count=n)
        assert len(deliveries) == n
        tail = broker.events_tail()
        ended = _numbered(n, "job.succeeded")
        outcomes = [
            Finish(d, JobStatus.SUCCEEDED, b"r", event=e)
            for d, e in zip(deliveries, ended, strict=True)
        ]
        started = _numbered(n, "job.started")
        assert broker.finish(outcomes, started) == [True] * n
        assert _bodies(broker, tail) == started + ended

    def test_a_large_finish_with_refusals_publishes_only_those_it_records(
        self, broker: Broker
    ) -> None:
        n = 150  # with the call's own events, more than one stream entry's worth
        broker.enqueue([envelope() for _ in range(n)])
        deliveries = fetch(broker, count=n)
        tail = broker.events_tail()
        ended = _numbered(n, "job.succeeded")
        outcomes = [
            Finish(
                d if i % 7 else msgspec.structs.replace(d, token="not-the-token"),
                JobStatus.SUCCEEDED,
                b"r",
                event=e if i % 5 else None,
            )
            for i, (d, e) in enumerate(zip(deliveries, ended, strict=True))
        ]
        started = _numbered(n, "job.started")
        assert broker.finish(outcomes, started) == [i % 7 != 0 for i in range(n)]
        recorded = [e for i, e in enumerate(ended) if i % 7 and i % 5]
        assert _bodies(broker, tail) == started + recorded

    # -- events riding on cancel -----------------------------------------------------------

    def test_cancel_publishes_its_event_only_if_it_cancels_a_pending_job(
        self, broker: Broker, timeline: Timeline
    ) -> None:
        queued, later, running = envelope(), envelope(eta=timeline.now + 3600), envelope()
        broker.enqueue([running])
        [d] = fetch(broker)
        broker.enqueue([queued, later])
        tail = broker.events_tail()
        assert broker.cancel(queued.id, b"queued cancelled") is JobStatus.CANCELLED
        assert broker.cancel(later.id, b"later cancelled") is JobStatus.CANCELLED
        assert broker.cancel(queued.id, b"cancelled again") is JobStatus.CANCELLED  # no event
        assert broker.cancel(running.id, b"flagged") is JobStatus.RUNNING  # its worker's to say
        assert broker.cancel(later.id) is JobStatus.CANCELLED
        assert _bodies(broker, tail) == [b"queued cancelled", b"later cancelled"]
        assert broker.finish([Finish(d, JobStatus.CANCELLED, b"r", event=b"stopped")]) == [True]
        assert _bodies(broker, tail)[-1] == b"stopped"
