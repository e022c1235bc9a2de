"""The events a worker publishes, and how they reach the broker without a call of their own
while the worker is busy.

* A job's outcome event (succeeded, failed, retried, dead, cancelled, or requeued until its
  rate limit allows it) rides on its ``Finish``: the broker publishes it only if it
  records the outcome, in the same step.
* Started, online and heartbeat events wait in the outbox and ride on the next ``finish``
  call, whichever thread makes it. When none comes within ``FLUSH_AFTER`` (the jobs run
  long, or the worker is idle), the finisher thread publishes them on its own: at most one
  call per ``FLUSH_AFTER``, never one per job.
* Whatever takes the outbox's events sends them under one lock (``carry``), so they reach
  the broker in the order they were made; a job's started event, made before its outcome,
  is published in the same call or an earlier one. Adding takes no lock (every job thread
  adds, and a contended lock there cost the threads more than the events themselves):
  a deque's ``append`` and ``popleft`` are atomic, and a carrier forgets the flush time
  before it empties the outbox, so an event added meanwhile sets it again.
* The outbox holds at most ``MAX_PENDING`` events: a broker away for long makes the worker
  drop its oldest events, as a full log does, and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from .. import _events
from .._clock import Clock, SystemClock
from .._events import ENDED, RATE_LIMITED, WORKER_STOPPED, Event
from .._message import JobStatus, WorkerInfo
from ..brokers._port import Finish
from ._attempt import Attempt

log = logging.getLogger("conveyor.worker")

T = TypeVar("T")

FLUSH_AFTER = 0.05  # seconds an event waits for a finish call to ride on
MAX_PENDING = 10_000

# Every job makes two events (started, and its outcome's): they are encoded by an encoder's
# own method and stamped inline (``_events.encode`` and ``_events.stamp`` do the same in a
# Python call each), and the system clock is read without ``SystemClock.time`` around it.
_encode = msgspec.json.Encoder().encode
# The outcome's event is set on its Finish in place (see ``WorkerEvents.outcome``).
_set = msgspec.structs.force_setattr


class WorkerEvents:
    """Builds this worker's events and keeps those waiting for a call to ride on."""

    def __init__(self, worker_id: str, clock: Clock) -> None:
        self.worker_id = worker_id
        self._clock = clock
        self._system = type(clock) is SystemClock  # time.time() itself, without a call more
        self._sending = threading.Lock()  # one carrier at a time: publish order = make order
        self._pending: deque[bytes] = deque(maxlen=MAX_PENDING)  # full: the oldest go
        self._due: float | None = None  # time.monotonic() by which the outbox goes out
        # Called when the outbox gets an event while empty (the finisher's timer starts).
        self.wake: Callable[[], None] = lambda: None

    # -- the outbox ------------------------------------------------------------------------

    def add(self, event: bytes, *, wake: bool = True) -> None:
        self._pending.append(event)
        if self._due is None:  # the first since the outbox was last taken (or two at once)
            self._due = time.monotonic() + FLUSH_AFTER
            if wake:
                self.wake()

    def due(self) -> float | None:
        """When the waiting events must go out on their own (None: nothing waits)."""
        return self._due

    def carry(self, call: Callable[[list[bytes]], T], retry_in: float = FLUSH_AFTER) -> T:
        """``call(events)`` with every waiting event, taken and sent under the send lock; if
        it raises, they wait again (in front of newer ones) for ``retry_in`` seconds."""
        with self._sending:
            self._due = None  # first: an event added from here on sets it again (add)
            events = []
            with contextlib.suppress(IndexError):
                while True:
                    events.append(self._pending.popleft())
            try:
                return call(events)
            except BaseException:
                if events:  # in front of what came meanwhile (a full outbox drops the newest)
                    self._pending.extendleft(reversed(events))
                    self._due = time.monotonic() + retry_in
                raise

    def publish(self, publish: Callable[[Sequence[bytes]], None], retry_in: float) -> bool:
        """Send the waiting events on their own; False (they wait again) if that failed."""
        try:
            self.carry(lambda events: publish(events) if events else None, retry_in)
        except Exception as exc:
            log.debug("events not published yet (%s); retrying in %.1f s", exc, retry_in)
            return False
        return True

    # -- what a worker publishes -----------------------------------------------------------

    def started(self, attempt: Attempt, *, wake: bool = True) -> None:
        message, d = attempt.message, attempt.delivery
        assert message is not None, "only decoded jobs start"
        # Built field by field, not through job_event's keywords: this runs for every job.
        now = time.time() if self._system else self._clock.time()
        event = Event(
            "job.started",
            int(now * 1_000_000) / 1_000_000,  # _events.stamp
            job_id=d.id,
            task=message.task,
            queue=d.queue,
            worker_id=self.worker_id,
            attempt=message.attempt,
            deliveries=d.deliveries,
        )
        # add's lines, inline (a Python call with a keyword per job less)
        self._pending.append(_encode(event))
        if self._due is None:
            self._due = time.monotonic() + FLUSH_AFTER
            if wake:
                self.wake()

    def outcome(self, attempt: Attempt, finish: Finish) -> Finish:
        """``finish`` with its job's event on it: set on that very ``Finish``, not on a copy.
        The caller made it for this job a moment ago and has not handed it to anyone (a
        copy, ``msgspec.structs.replace``, built every job's ``Finish`` twice)."""
        message, d, status = attempt.message, attempt.delivery, finish.status
        now = time.time() if self._system else self._clock.time()
        ran = time.monotonic() - attempt.began if attempt.began else None
        event = Event(
            ENDED.get(status, "job.retried"),
            int(now * 1_000_000) / 1_000_000,  # _events.stamp, as below
            job_id=d.id,
            task=message.task if message is not None else "",
            queue=d.queue,
            worker_id=self.worker_id,
            attempt=message.attempt if message is not None else None,
            duration=int(ran * 1_000_000) / 1_000_000 if ran is not None else None,
        )
        if status is JobStatus.SUCCEEDED:
            pass  # the usual case: nothing more to say
        elif status is JobStatus.SCHEDULED:
            retry = finish.retry
            if retry is not None and retry.eta is not None:
                event.eta = _events.stamp(retry.eta)
            if attempt.error is not None:
                event.error = attempt.error.type
            else:  # put back until its rate limit allows it; it did not run
                event.type, event.reason = "job.requeued", RATE_LIMITED
        elif status is JobStatus.FAILED:
            error = attempt.error
            event.error = error.type if error is not None else _kind(finish.reason)
        else:
            event.reason = finish.reason[:500]
            if status is JobStatus.DEAD:
                event.deliveries = d.deliveries
        _set(finish, "event", _encode(event))
        return finish

    def handed_back(self, attempts: Sequence[Attempt], released: Sequence[bool]) -> None:
        """``job.requeued`` for each started job a stopping worker handed back."""
        now = self._clock.time()
        for attempt, ok in zip(attempts, released, strict=True):
            if ok and attempt.began and attempt.message is not None:
                d = attempt.delivery
                event = _events.job_event(
                    "job.requeued",
                    now,
                    d.id,
                    attempt.message.task,
                    d.queue,
                    worker_id=self.worker_id,
                    reason=WORKER_STOPPED,
                )
                self.add(event, wake=False)

    def worker(self, kind: str, info: WorkerInfo) -> None:
        self.add(_events.worker_event(kind, self._clock.time(), info))


def _kind(reason: str) -> str:
    """The error type at the head of a failure's reason ("<type>: <message>")."""
    return reason.partition(": ")[0]
