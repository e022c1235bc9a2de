"""What the RabbitMQ broker's two halves share: the record store it runs every store call
in (inside the store's own error boundary), the link to RabbitMQ, and the watches."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from ..._message import JobStatus
from .._base import ErrorBoundary, Watch
from .._port import Broker, Claimed
from ._link import Link, Ticket

T = TypeVar("T")

UNSEEN = 1.0  # seconds a ticket's jobs with no record yet, or still queued, are looked for
RECHECK = 0.001  # seconds to the first look again at them (then after the ticket's age)


class Guarded(Watch[T]):
    """A store's watch run inside the store's error boundary."""

    def __init__(self, watch: Watch[T], errors: ErrorBoundary) -> None:
        self._watch = watch
        self._errors = errors

    def __enter__(self) -> Guarded[T]:
        with self._errors:
            self._watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._errors:
            self._watch.__exit__(*exc)

    def look(self) -> T:
        with self._errors:
            return self._watch.look()

    def sleep_then_look(self, seconds: float) -> T:
        with self._errors:
            return self._watch.sleep_then_look(seconds)


class Fetching(Watch[Claimed]):
    """A fetch: the store's look claims (its order, pause, leases and fences are the
    store's); the sleep waits for a ticket from RabbitMQ, or a sweep's time. Each look
    settles the tickets buffered for its queues: the ones whose job is still queued stay
    (unacknowledged: another look of this worker takes them), the others are acknowledged.
    The arrival count is read before the store's look, so a ticket published after it
    wakes the sleep that follows: no lost wake-up."""

    def __init__(
        self,
        store: Broker,
        link: Link,
        *,
        sweep: float,
        queues: list[str],
        count: int,
        lease: float,
        consumer: str,
    ) -> None:
        self._store = store
        self._link = link
        self._sweep = sweep
        self._queues = queues
        self._count = count
        with store._errors:
            watch = store._fetch(queues, consumer, count, lease)
        self._watch = Guarded(watch, store._errors)
        self._seen = 0
        self._recheck = math.inf  # when to look again at young tickets (time.monotonic())

    def __enter__(self) -> Fetching:
        self._link.consume(self._queues, self._count)
        self._watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.__exit__(*exc)

    def look(self) -> Claimed:
        self._seen = self._link.arrivals
        self._recheck = math.inf
        got, due_in = self._watch.look()
        tickets = self._link.take(self._queues)
        if tickets:
            try:
                self._settle(tickets, {d.id for d in got}, full=len(got) >= self._count)
            except BaseException:
                # The store's read failed: the tickets go back to their buffer, for a
                # later look to settle (or to be handed back after ``HOLD``), not held by
                # this consumer, unseen, until its connection closes.
                self._link.settle([], tickets)
                raise
        return got, due_in

    def sleep_then_look(self, seconds: float) -> Claimed:
        soon = max(self._recheck - time.monotonic(), 0.0)
        self._link.wait(self._seen, min(seconds, self._sweep, soon))
        return self.look()

    def _settle(self, tickets: list[Ticket], claimed: set[str], *, full: bool) -> None:
        """Acknowledge the tickets none of whose jobs is queued any more; keep the others,
        with the ids still queued. ``full``: the look claimed all it could, so more jobs are
        queued: the jobs it did not claim are taken for queued without asking the store
        (most are: a drain pays no read per look), for the first look that is not full to
        settle."""
        now = time.monotonic()
        if full:
            queued = {i for t in tickets for i in t.job_ids if i not in claimed}
        else:
            asked = list(dict.fromkeys(i for t in tickets for i in t.job_ids if i not in claimed))
            with self._store._errors:
                records = self._store._get(asked) if asked else []
            queued = {r.id for r in records if r is not None and r.status is JobStatus.QUEUED}
            # A ticket can come before its record is written (the enqueue sends it while it
            # writes), or its record be written right after this look's claim: a young
            # ticket keeps its jobs with no record or still queued, and the look is made
            # again soon, later the older the ticket (a paused queue's cost a few looks).
            unseen = {i for i, r in zip(asked, records, strict=True) if r is None}
            for ticket in tickets:
                age = now - ticket.arrived
                if age < UNSEEN and any(i in queued or i in unseen for i in ticket.job_ids):
                    queued.update(i for i in ticket.job_ids if i in unseen)
                    self._recheck = min(self._recheck, now + max(age, RECHECK))
        done: list[Ticket] = []
        kept: list[Ticket] = []
        for ticket in tickets:
            left = tuple(i for i in ticket.job_ids if i in queued)
            if not left:
                done.append(ticket)
            else:
                kept.append(ticket if left == ticket.job_ids else replace(ticket, job_ids=left))
        self._link.settle(done, kept)


def due_tickets(
    store: Broker,
    ids: Sequence[str | None],
    wanted: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.SCHEDULED),
) -> list[tuple[str, str]]:
    """``(queue, id)`` tickets for the jobs of ``ids`` that are queued or scheduled (not
    parked): what a worker should look at the store for."""
    known = [i for i in ids if i is not None]
    if not known:
        return []
    with store._errors:
        records = store._get(known)
    return [(r.queue, r.id) for r in records if r is not None and r.status in wanted]


def queued_tickets(store: Broker, ids: Sequence[str | None]) -> list[tuple[str, str]]:
    """The tickets of the jobs of ``ids`` that are queued (a scheduled one may be parked)."""
    return due_tickets(store, ids, (JobStatus.QUEUED,))
