"""The fetch loop: fill free slots from the broker, vet each delivery, hand it to a pool.

Every delivery ends in exactly one ``Finish`` or ``release``. A delivery that must not run
(delivered too often, undecodable, unknown or untrusted task) is dead-lettered on the spot
with a reason and the loop moves on; nothing it names is imported.

An idle worker runs a lone tiny job in the consumer's own thread: when a fetch brought one
delivery, nothing else runs, the pool is ``threads``, and the task is sync and its last
``QUICK_RUNS`` runs each took under ``QUICK`` seconds. That saves waking a pool thread
between a delivery arriving and the task starting. The job is held, renewed, cancelled and
time-limited exactly as on a pool thread (``_threads.run_here``); the cost of a task that
turns slow is that the consumer fetches nothing until it returns (once: a slow run makes
the task "not quick" again), and a stop's grace that runs out while it runs is kept by
``Worker.run``'s main thread, which shuts the worker down itself (``here`` says what runs).
A busy worker never does it, so batching is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import ratelimit, workflows
from .._backoff import Backoff
from .._checks import shown
from .._clock import Clock
from .._codec import Codec
from .._errors import (
    BrokerAuthError,
    BrokerError,
    BrokerGone,
    ConfigurationError,
    InvalidName,
    UntrustedTask,
)
from .._message import Delivery, Envelope, JobStatus, Outcome
from ..brokers._port import Broker, Finish, LeaseState
from ._attempt import Attempt, Raised, Result, Results
from ._deadlines import Deadlines
from ._describe import name_of, text_of
from ._events import WorkerEvents
from ._finisher import Finisher
from ._inflight import Inflight
from ._joblog import log_job
from ._outcome import Outcomes
from ._pools import Executor
from ._resolve import Resolver, UnknownTask
from ._threads import run_here

if TYPE_CHECKING:
    from .._app import Conveyor

log = logging.getLogger("conveyor.worker")

QUICK = 0.001  # seconds: a run this short is tiny
QUICK_RUNS = 3  # consecutive tiny runs before a task may run in the consumer's thread
# What importing or unpickling user code may raise (a module that calls sys.exit() when
# imported, say) and must only cost that job; a Ctrl-C still stops the worker.
_USER_CODE_ERRORS = (Exception, SystemExit, GeneratorExit)


class _Dead(Exception):
    """Control flow: this delivery goes to the dead-letter queue, with this reason."""


class _Settled(Exception):
    """Control flow: a workflow step whose outcome is known without running it."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__("settled")
        self.outcome = outcome


class Consumer:
    def __init__(
        self,
        *,
        app: Conveyor,
        broker: Broker,
        queues: Sequence[str],
        name: str,
        lease: float,
        max_deliveries: int,
        codec: Codec,
        results: Results,
        clock: Clock,
        resolver: Resolver,
        outcomes: Outcomes,
        inflight: Inflight,
        backoff: Backoff,
        pause: Callable[[float], object],
        events: WorkerEvents | None = None,
    ) -> None:
        self.app = app  # for the workflow and rate-limit hooks, which work on the ports
        self.broker = broker
        self.queues = list(queues)
        self.name = name
        self.lease = lease
        self.max_deliveries = max_deliveries
        self.codec = codec
        self.results = results
        self.clock = clock
        self.resolver = resolver
        self.outcomes = outcomes
        self.inflight = inflight
        self.backoff = backoff
        self.pause = pause  # sleeps, but wakes early when the worker is told to stop
        self.events = events  # None: events are off, and nothing is built
        inflight.start = self._launch  # a buffered job that got a freed slot
        self._quick: dict[str, int] = {}  # task -> how many of its last runs were tiny
        self._admitting: list[Attempt] = []  # the fetch's jobs vetted, not yet given a slot
        self.here: Attempt | None = None  # the job running in this thread, if one does
        # Set for each run or drain (they are rebuilt each time):
        self.executor: Executor | None = None
        self.finisher: Finisher | None = None
        self.deadlines: Deadlines | None = None

    # -- fetching --------------------------------------------------------------------------

    def fetch(self, count: int, block: float) -> list[Delivery] | None:
        """Up to ``count`` deliveries; None after a broker error (already backed off).
        ``BrokerAuthError``, ``BrokerGone`` and ``ConfigurationError`` are raised: no wait
        makes refused credentials good, brings back a deleted database file, or mends a URL
        that does not fit the broker's data (a plain URL on a sharded Redis prefix)."""
        sent = time.monotonic()
        try:
            deliveries = self.broker.fetch(self.queues, self.name, count, self.lease, block)
        except (BrokerAuthError, BrokerGone, ConfigurationError):
            raise  # the same call fails again: the worker stops (see Worker)
        except BrokerError as exc:
            delay = self.backoff.next()
            log.warning("cannot fetch from the broker, retrying in %.1f s: %s", delay, exc)
            self.pause(delay)
            return None
        except Exception:  # an adapter bug must not end the worker, nor spin it
            delay = self.backoff.next()
            log.exception("fetch failed unexpectedly; retrying in %.1f s", delay)
            self.pause(delay)
            return None
        if self.backoff.failures:
            log.info("the broker is reachable again")
        self.backoff.reset()
        if deliveries and time.monotonic() - sent > block + self.lease / 3:
            return self._still_ours(deliveries)
        return deliveries

    def _still_ours(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Deliveries from a fetch that took far longer than its block (this process was
        stopped, or the network stalled): the broker may have granted their leases long ago,
        and another worker may run them now. Renew first; run only those still ours."""
        try:
            states = self.broker.renew(deliveries, self.lease)
        except Exception as exc:
            log.warning("a slow fetch's %d job(s) could not be renewed (%s); "
                        "they return when their lease expires", len(deliveries), exc)  # fmt: skip
            return []
        kept = [d for d, state in zip(deliveries, states, strict=True) if state != LeaseState.LOST]
        if len(kept) < len(deliveries):
            log.info("a slow fetch: %d of its job(s) were no longer ours; not running them",
                     len(deliveries) - len(kept))  # fmt: skip
        return kept

    def release(self, attempts: Sequence[Attempt]) -> None:
        """Hand running jobs back for immediate redelivery (what a stopping worker does)."""
        released = self.hand_back([a.delivery for a in attempts])
        if self.events is not None and released:
            self.events.handed_back(attempts, released)
        self.inflight.drop(list(attempts))

    def hand_back(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Release deliveries; per delivery whether it went back ([] if the call failed)."""
        if not deliveries:
            return []
        try:
            released = self.broker.release(deliveries)
            log.info("handed back %d unfinished job(s) for redelivery", len(deliveries))
        except Exception as exc:
            log.warning(
                "cannot hand back %d job(s) (%s); they return when their lease expires",
                len(deliveries),
                exc,
            )
            return []
        return released

    # -- dispatch --------------------------------------------------------------------------

    def dispatch(self, deliveries: Sequence[Delivery]) -> None:
        """Hold every delivery of a fetch (so all their leases are renewed), vet each, then
        give run slots to the vetted ones in fetch order under one lock (not one per job)
        and start those that got one; the rest are buffered. The job threads the first
        starts wake would wait for the GIL while this thread dispatches anyway; a job whose
        vetting waits on the broker starts those vetted before it first (``_vet``)."""
        fetched = time.monotonic()  # once for the fetch, not once per delivery
        attempts = [Attempt(d, fetched) for d in deliveries]
        self.inflight.hold(attempts)
        vetted = self._admitting
        for attempt in attempts:
            if self._ready(attempt):
                vetted.append(attempt)
        self._start_vetted(alone=len(attempts) == 1)

    def _start_vetted(self, alone: bool = False) -> None:
        """Give run slots to the jobs vetted so far, in fetch order, and start those that
        got one."""
        vetted = self._admitting
        if not vetted:
            return
        admitted = self.inflight.admit_all(vetted)
        vetted.clear()
        for attempt in admitted:
            try:
                self._launch(attempt, here=alone and self._runs_here(attempt))
            except Exception:
                self._let_go(attempt)

    def abandon(self, attempt: Attempt) -> None:
        """Let a job go without an outcome, as if this worker had died (its pool process
        did): its lease lapses, it is delivered again, and that delivery counts, so
        ``max_deliveries`` ends a job that keeps killing its process."""
        if self.inflight.complete(attempt):  # False: handed back by a shutdown already
            attempt.lost = True  # no more renewals
            self.inflight.drop([attempt])

    def _let_go(self, attempt: Attempt, what: str = "start it") -> None:
        """A bug of ours, not the job's. Let go of it without a verdict: its lease
        expires, it is delivered again, and max_deliveries bounds a repeat."""
        log_job(
            logging.ERROR,
            attempt,
            "job %s: cannot %s; it returns when its lease expires",
            attempt.job_id,
            what,
            exc_info=True,
        )
        attempt.lost = True
        self.inflight.drop([attempt])

    def _ready(self, attempt: Attempt) -> bool:
        """Whether a held job may take a run slot; if not, its outcome (dead, settled, or
        put back for its rate limit) is recorded, or it is let go (a bug of ours)."""
        try:
            return self._vetted(attempt)
        except Exception:
            self._let_go(attempt)
            return False

    def _vetted(self, attempt: Attempt) -> bool:
        delivery = attempt.delivery
        try:
            self._vet(attempt)
            message = attempt.message
            assert message is not None
            # Only a task with a rate limit may wait (_rate_limit's own first check, inline).
            wait = 0.0 if message.rate is None else self._rate_limit(attempt)
        except _Dead as dead:
            self.inflight.complete(attempt)
            self._record(attempt, self.outcomes.dead(delivery, str(dead), attempt.message))
            return False
        except _Settled as settled:
            self.inflight.complete(attempt)
            self._record(attempt, self._settle(attempt, settled.outcome))
            return False
        if wait > 0:
            self.inflight.complete(attempt)
            self._record(attempt, self._postpone(attempt, wait))
            return False
        return True

    def _runs_here(self, attempt: Attempt) -> bool:
        """Whether this job runs in the consumer's thread (see the module docstring)."""
        assert self.executor is not None
        return (
            self.executor.pool == "threads"
            and not attempt.is_async
            and self.inflight.active == 1
            and self._quick.get(attempt.name, 0) >= QUICK_RUNS
        )

    def _launch(self, attempt: Attempt, here: bool = False) -> None:
        """Hand a job that holds a run slot to its pool (or run it ``here``); its time
        limit starts now."""
        assert self.executor is not None and attempt.message is not None
        if attempt.lost:
            # Its lease lapsed while it waited in the buffer (the keeper could not renew
            # it): another worker may run it now, and our result would be refused.
            self.inflight.drop([attempt])
            return
        try:
            deadlines, timeout = self.deadlines, attempt.message.timeout
            if timeout and deadlines is not None and not self.executor.arms(attempt):
                deadlines.add(attempt, timeout)  # else once a child or thread has it (arm)
            attempt.began = time.monotonic()
            if self.events is not None:  # here: its finish, right after, carries it
                self.events.started(attempt, wake=not here)
            if here:
                self.here = attempt
                try:
                    run_here(attempt, self.results, self.complete, self.progress)
                finally:
                    self.here = None
            else:
                self.executor.submit(attempt)
        except Exception:
            self._let_go(attempt)

    def arm(self, attempt: Attempt) -> None:
        """Start a job's time limit: called by its pool once a child or a thread has it
        (``Executor.arms``)."""
        assert attempt.message is not None
        deadlines, timeout = self.deadlines, attempt.message.timeout
        if timeout and deadlines is not None:
            deadlines.add(attempt, timeout)

    def _rate_limit(self, attempt: Attempt) -> float:
        """Seconds the job must wait for its rate limit (0: run it now)."""
        assert attempt.message is not None
        if attempt.message.rate is None:
            return 0.0  # what acquire says, without the call
        try:
            return ratelimit.acquire(self.app, attempt.message)
        except ConfigurationError as exc:
            raise _Dead(f"bad rate limit: {exc}") from exc
        except InvalidName as exc:  # a rate key its counters cannot take: never countable
            raise _Dead(f"bad rate key: {exc}") from exc

    def _settle(self, attempt: Attempt, outcome: Outcome) -> Finish:
        assert attempt.message is not None
        status = JobStatus.SUCCEEDED if outcome.error is None else JobStatus.FAILED
        result = self.codec.encode_outcome(outcome)
        ttl = float(attempt.message.result_ttl)
        reason = "" if outcome.error is None else f"{outcome.error.type}: {outcome.error.message}"
        return Finish(attempt.delivery, status, result, result_ttl=ttl, reason=reason)

    def _postpone(self, attempt: Attempt, wait: float) -> Finish:
        """Put a rate-limited job back for later, with its payload as it was (no attempt
        is counted)."""
        d, message = attempt.delivery, attempt.message
        assert message is not None
        eta = self.clock.time() + wait
        again = Envelope(d.id, d.queue, d.payload, d.priority, eta=eta, key=message.key)
        log_job(logging.DEBUG, attempt, "job %s: rate limited, back in %.2f s", d.id, wait)
        return Finish(d, JobStatus.SCHEDULED, retry=again)

    def _record(self, attempt: Attempt, finish: Finish) -> None:
        """Hand an outcome to the finisher, after the workflow it belongs to has moved on
        (before, so a crash in between repeats the idempotent advance, never skips it)."""
        assert self.finisher is not None
        message = attempt.message
        # Only a workflow step has anything to advance (advance's own first check, inline).
        if message is not None and message.workflow and finish.status.terminal:
            try:
                workflows.advance(self.app, message, finish.status, finish.result)
            except BrokerError as exc:
                log_job(logging.WARNING, attempt,
                        "job %s: cannot advance its workflow (%s); handing it back",
                        attempt.job_id, exc)  # fmt: skip
                self.hand_back([attempt.delivery])
                self.inflight.drop([attempt])
                return
        if self.events is not None:
            finish = self.events.outcome(attempt, finish)
        # Nothing else is held (none runs, waits in the buffer or for its write): write it
        # from this thread, without waking the finisher's. Not merely "none runs": while a
        # fetch's jobs are being dispatched, or a slot waits for a buffered job to start,
        # that is true for a moment, and job threads each writing their own outcome, one
        # round trip after another, held up every other job.
        self.finisher.put(attempt, finish, alone=self.inflight.alone())

    def _vet(self, attempt: Attempt) -> None:
        delivery = attempt.delivery
        if len(delivery.payload) > self.codec.max_decoded:
            raise _Dead(self._oversized(len(delivery.payload)))
        if delivery.deliveries > self.max_deliveries:
            # Decoded only so that a workflow step's workflow moves on (its later steps
            # fail), and only from JSON, which runs no code of the payload's: unpickling may
            # be what crashes the worker every time.
            if self.codec.serializer == "json":
                with contextlib.suppress(Exception):
                    message = self.codec.decode_message(delivery.payload)
                    if message.id == delivery.id:
                        attempt.message = message
            raise _Dead(
                f"delivered {delivery.deliveries} times without finishing; "
                "it may be crashing the worker"
            )
        try:
            message = self.codec.decode_message(delivery.payload)
        except _USER_CODE_ERRORS as exc:  # unpickling runs the payload's classes' code
            raise _Dead(f"undecodable payload: {text_of(exc)}") from exc
        if message.id != delivery.id:
            # A signature covers the payload, not the id the broker files it under: a job's
            # payload copied under another id (a replay) runs nothing, and moves no workflow
            # (``attempt.message`` stays None).
            raise _Dead(
                f"the payload belongs to job {shown(message.id)}, not to this one: a job's "
                "payload written into the broker under another id is not run"
            )
        attempt.message = message
        # Only a workflow step, a collect step or a job with dependencies may be settled
        # without running: short_circuit's own checks, inline (a Python call per job less).
        step = message.workflow or message.task == workflows.COLLECT or message.depends_on
        if step or message.rate is not None:
            # Its checks (and a workflow's advance) are broker round trips: the jobs
            # vetted before it start now, not after them.
            self._start_vetted()
        if step:
            settled = workflows.short_circuit(self.app, message)
            if settled is not None:
                raise _Settled(settled)
        try:
            found = self.resolver.resolve(message.task)
        except (UnknownTask, UntrustedTask) as exc:
            raise _Dead(str(exc)) from exc
        except _USER_CODE_ERRORS as exc:  # the trusted module itself failed to import
            why = f"{name_of(type(exc))}: {text_of(exc)}"
            raise _Dead(f"cannot load task {message.task!r}: {why}") from exc
        attempt.fn, attempt.is_async = found.fn, found.is_async

    def _oversized(self, size: int) -> str:
        limit, cap = self.codec.max_decoded, self.codec.max_payload
        return (
            f"payload of {size} bytes is over the {limit} bytes a worker decodes (twice "
            f"max_payload={cap}); not decoded: the app enqueues at most max_payload bytes. "
            "If such jobs are meant to run, raise Conveyor(max_payload=...) for the producer "
            "and the workers alike"
        )

    # -- callbacks from the pools ----------------------------------------------------------

    def complete(self, attempt: Attempt, result: Result) -> None:
        """A run ended (in a pool thread): turn it into a Finish for the finisher."""
        ran = time.monotonic() - attempt.began
        if not attempt.is_async:  # only sync jobs may run in the consumer's thread
            # Written only when the count changes: it stops at QUICK_RUNS (all _runs_here
            # asks) and goes back to 0 only from more, so a busy worker's jobs read it only.
            task = attempt.message.task  # type: ignore[union-attr]  # only decoded jobs run
            quick = self._quick
            runs = quick.get(task, 0)
            if ran < QUICK:
                if runs < QUICK_RUNS:
                    quick[task] = runs + 1
            elif runs:
                quick[task] = 0
        if not self.inflight.complete(attempt, ran):
            return  # handed back during shutdown; another worker runs it again
        if isinstance(result, Raised):
            attempt.error = result.error  # for the log line once the failure is recorded
        try:
            finish = self.outcomes.finish(attempt, result)
        except Exception as exc:
            log_job(logging.ERROR, attempt, "job %s: cannot record its outcome", attempt.job_id,
                    exc_info=True)  # fmt: skip
            finish = Finish(attempt.delivery, JobStatus.FAILED, reason=f"worker error: {exc!r}")
        if finish.status is JobStatus.SCHEDULED:
            self._log_retry(attempt, finish)
        try:
            self._record(attempt, finish)
        except Exception:  # not held for ever with its lease renewed: it runs again
            self._let_go(attempt, "record its outcome")

    def _log_retry(self, attempt: Attempt, finish: Finish) -> None:
        message, error = attempt.message, attempt.error
        eta = finish.retry.eta if finish.retry is not None else None
        if message is None or eta is None or error is None:
            return
        log_job(
            logging.INFO,
            attempt,
            "job %s (%s) failed, retry %d of %d in %.1f s: %s: %s",
            attempt.job_id,
            attempt.name,
            message.attempt + 1,
            message.retries,
            max(eta - self.clock.time(), 0.0),
            error.type,
            error.message,
        )

    def progress(self, attempt: Attempt, value: float, note: str | None) -> None:
        try:
            self.broker.progress(attempt.delivery, value, note)
        except Exception as exc:  # progress is advisory: never fail the job over it
            log_job(logging.WARNING, attempt, "job %s: progress not recorded: %s",
                    attempt.job_id, exc)  # fmt: skip
