"""Writes outcomes in batches from one thread.

Completed jobs queue their ``Finish`` here; the thread takes everything queued and writes it
in one ``broker.finish`` call. Batching comes mostly from the broker's own latency: while one
call is in flight the next batch gathers, so a lone job's result is written at once and a
flood of tiny jobs costs one round trip per batch. But a call that returns quickly leaves
little to take, and small batches make calls quicker still: a drain of tiny jobs could
settle on ~15 outcomes per call instead of ~80, each call costing the worker as much CPU as
the 80 jobs' outcomes together. So while runs that usually end within ``GATHER`` seconds
hold run slots (more outcomes are coming), the thread waits up to ``GATHER`` for
``GATHER_BATCH`` outcomes before it writes; it writes at once when nothing else runs, when
runs are long or unknown, when only runs begun more than ``GATHER`` ago hold slots (a long
job among short ones: ``Inflight.long_runs``), and when the worker stops.

Queuing an outcome takes no lock: a deque's ``append`` is atomic, and the thread is woken
only when it waits for what was just queued (``_wake_at``), not for every outcome, and once
per wait, not by every outcome queued before it runs again.

A lone outcome (``put(..., alone=True)``: no other delivery is held) while the thread is
idle is written by the caller itself, which saves waking the thread on an idle worker's
result path; if that write fails, the thread takes it over and retries as usual.

Every finish call carries the worker's waiting events (``_events.WorkerEvents``); when they
wait ``FLUSH_AFTER`` without one, the thread publishes them on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from .._backoff import Backoff
from .._errors import BrokerError
from .._message import JobStatus
from ..brokers._port import Broker, Finish
from ._attempt import Attempt
from ._events import WorkerEvents
from ._inflight import Inflight
from ._joblog import log_job

log = logging.getLogger("conveyor.worker")

MAX_BATCH = 500
GATHER = 0.002  # seconds the thread may wait for more outcomes while short runs go on
GATHER_BATCH = 64  # outcomes worth a call without waiting
_NEVER = 1 << 62  # _wake_at while the thread writes: nobody wakes it
_PUBLISH_RETRY = 1.0  # seconds before events that could not be published are sent again


class Finisher:
    def __init__(
        self,
        broker: Broker,
        inflight: Inflight,
        backoff: Backoff,
        events: WorkerEvents | None = None,
    ) -> None:
        self._broker = broker
        self._events = events
        if events is not None:
            events.wake = self._wake
        self._inflight = inflight
        self._backoff = backoff
        self._cond = threading.Condition()
        self._queue: deque[tuple[Attempt, Finish]] = deque()
        self._stopping = False
        self._idle = False  # the thread waits for work, no write of its own in flight
        self._wake_at = _NEVER  # a put that makes the queue this long wakes the thread
        self._long_runs = 0  # a gather ends once no more runs than this hold slots
        self._give_up_at: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._give_up_at = None
        self._thread = threading.Thread(target=self._run, name="conveyor-finish", daemon=True)
        self._thread.start()

    def put(self, attempt: Attempt, finish: Finish, alone: bool = False) -> None:
        """Queue an outcome; ``alone``: no other delivery is held (the thread writes it at
        once, or the caller does when the thread is idle)."""
        if alone:
            with self._cond:
                if not (self._idle and not self._queue and not self._stopping):
                    self._queue.append((attempt, finish))
                    self._cond.notify()
                    return
            self._write_here(attempt, finish)
            return
        # No lock: the thread sets _wake_at under the lock before it checks the queue and
        # waits, so an outcome appended after that check reads the new _wake_at, and the
        # notify (which needs the lock) reaches the thread once it waits. A gathering
        # thread is also woken when only long runs (``Inflight.long_runs``), or none, hold
        # slots any more: nothing else is coming soon.
        # Once per wait: the notifier sets _wake_at to _NEVER, so the puts that come before
        # the woken thread runs (it waits for the GIL while job threads end runs) do not
        # notify it again; the thread sets _wake_at afresh before it next reads the queue.
        queue = self._queue
        queue.append((attempt, finish))
        wake_at = self._wake_at
        if len(queue) >= wake_at or (
            wake_at == GATHER_BATCH and self._inflight.active <= self._long_runs
        ):
            with self._cond:
                self._wake_at = _NEVER
                self._cond.notify()

    def _write_here(self, attempt: Attempt, finish: Finish) -> None:
        try:
            written = self._finish([finish])
        except Exception:  # the thread retries it, with backoff and logging
            self.put(attempt, finish)
            return
        self._done([(attempt, finish)], written)

    def stop(self, timeout: float) -> None:
        """Write what is queued (retrying a failing broker for up to ``timeout`` s), then end."""
        with self._cond:
            self._stopping = True
            self._give_up_at = time.monotonic() + timeout
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)

    def _wake(self) -> None:
        """Events wait: the thread starts their timer. A thread that is writing reads
        their due time when it next waits (``_take`` sets ``_idle`` before it reads it)."""
        if self._idle:
            with self._cond:
                self._cond.notify()

    def _finish(self, outcomes: list[Finish]) -> list[bool]:
        """One finish call, carrying the waiting events."""
        if self._events is None:
            return self._broker.finish(outcomes)
        return self._events.carry(lambda events: self._broker.finish(outcomes, events))

    def _take(self) -> list[tuple[Attempt, Finish]] | None:
        """The next batch; [] when waiting events are due on their own; None to end."""
        queue = self._queue
        with self._cond:
            self._idle = True
            gather_until: float | None = None
            while not self._stopping:
                self._wake_at = 1  # before the queue is read: see put
                if not queue:
                    due = self._events.due() if self._events is not None else None
                    if due is None:
                        self._cond.wait()
                    elif (left := due - time.monotonic()) > 0:
                        self._cond.wait(left)
                    else:
                        break
                    continue
                if len(queue) >= GATHER_BATCH:
                    break
                now = time.monotonic()
                if gather_until is None:  # the runs are looked at once per gather
                    long_runs = self._inflight.long_runs(GATHER)
                    if long_runs is None:
                        break
                    gather_until = now + GATHER
                    self._long_runs = long_runs  # before _wake_at: see put
                elif now >= gather_until or self._inflight.active <= self._long_runs:
                    break
                self._wake_at = GATHER_BATCH
                if len(queue) < GATHER_BATCH:
                    self._cond.wait(gather_until - now)
            self._wake_at = _NEVER
            self._idle = False
            if not queue:
                return None if self._stopping else []
            return [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._write(batch)
            elif self._events is not None:
                self._events.publish(self._broker.publish, _PUBLISH_RETRY)

    def _write(self, batch: list[tuple[Attempt, Finish]]) -> None:
        while True:
            try:
                written = self._finish([f for _, f in batch])
            except BrokerError as exc:
                if self._gave_up(exc, batch):
                    return
                continue
            except Exception:  # a broken adapter must not kill the thread that owns results
                log.exception("finishing %d job(s) failed unexpectedly", len(batch))
                if self._gave_up(None, batch):
                    return
                continue
            break
        self._backoff.reset()
        self._done(batch, written)

    def _done(self, batch: list[tuple[Attempt, Finish]], written: list[bool]) -> None:
        quiet = not log.isEnabledFor(logging.DEBUG)  # a success then has nothing to say
        for (attempt, finish), ok in zip(batch, written, strict=True):
            if not (quiet and ok and finish.status is JobStatus.SUCCEEDED):
                self._report(attempt, finish, ok)
        self._inflight.remove([a for a, _ in batch])

    def _gave_up(self, exc: BrokerError | None, batch: list[tuple[Attempt, Finish]]) -> bool:
        delay = self._backoff.next()
        if exc is not None:
            log.warning(
                "cannot record %d result(s), retrying in %.1f s: %s", len(batch), delay, exc
            )
        give_up_at = self._give_up_at
        if give_up_at is not None and time.monotonic() + delay > give_up_at:
            # Shutting down and the broker is still away: the leases will expire and the
            # jobs run again elsewhere (at-least-once), so nothing is lost.
            log.error("giving up on %d unrecorded result(s); they will be redelivered", len(batch))
            self._inflight.drop([a for a, _ in batch])
            return True
        with self._cond:
            # Sleep out the delay, but wake when a stop starts (to re-check the deadline).
            stopping = self._stopping
            self._cond.wait_for(lambda: self._stopping != stopping, delay)
        return False

    def _refused(self, job_id: str) -> str:
        """Why the broker refused an outcome, as its record says (one look; refusals are
        rare): the job went on without this worker, or it is gone altogether."""
        try:
            [record] = self._broker.get([job_id])
        except Exception:  # the look is for the log line only
            return "its lease was lost, or the job no longer exists"
        if record is None:
            return (
                "the job no longer exists (deleted, purged or expired, or lost with a "
                "failed-over Redis master that had not passed it on)"
            )
        return (
            "its lease was lost and the job went on without this worker (it is "
            f"{record.status.value} now)"
        )

    def _report(self, attempt: Attempt, finish: Finish, ok: bool) -> None:
        """One line per recorded outcome: a dead letter at ERROR with its reason, a failure
        (no retries left, or not retried) at WARNING with its traceback, the rest at DEBUG
        (a retry was logged at INFO when it was decided)."""
        status = finish.status
        if not ok:
            why = self._refused(attempt.job_id)
            log_job(logging.WARNING, attempt, "job %s (%s): the %s outcome was refused: %s",
                    attempt.job_id, attempt.name, status, why)  # fmt: skip
            return
        if status is JobStatus.DEAD:
            log_job(logging.ERROR, attempt, "job %s (%s) was dead-lettered after %.0f ms: %s",
                    attempt.job_id, attempt.name, _ms(attempt), finish.reason)  # fmt: skip
        elif status is JobStatus.FAILED:
            error = attempt.error
            log_job(logging.WARNING, attempt, "job %s (%s) failed after %.0f ms: %s",
                    attempt.job_id, attempt.name, _ms(attempt), finish.reason,
                    traceback=error.traceback if error is not None else "")  # fmt: skip
        elif log.isEnabledFor(logging.DEBUG):  # the success of every job comes this way
            log_job(logging.DEBUG, attempt, "job %s (%s) %s in %.1f ms",
                    attempt.job_id, attempt.name, status, _ms(attempt))  # fmt: skip


def _ms(attempt: Attempt) -> float:
    return (time.monotonic() - attempt.started) * 1000
