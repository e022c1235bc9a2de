"""``drain(app)``: run everything there is to run, here and now, and never hang.

A drain works in rounds. Each round enqueues the periodic ticks that are due, then runs
every queued job (a real ``Worker`` in the calling thread, until its queues have nothing
queued or running). Then it looks at what is left:

* nothing: done;
* jobs scheduled for later (a retry's backoff, ``delay=``, ``eta=``, a rate limit): on a
  ``FakeClock`` the clock is moved to the first one's time; on a real clock the drain sleeps
  until then if that is within its wall-clock bound (``timeout``), and raises
  ``DrainIncomplete`` if not;
* jobs parked on other jobs that will not end (``depends_on`` a job of a queue not drained):
  ``DrainIncomplete``.

Every way it could go on forever is bounded and ends in ``DrainIncomplete``, whose message
says what is left and which argument to raise: ``max_jobs`` (a job that enqueues another
every time it runs), ``max_rounds`` (jobs that keep coming due), ``timeout`` (a job stuck on
a lock or a sleep). With ``advance=False`` a drain runs what is due now and leaves the rest;
with ``until=`` it moves a ``FakeClock`` through every job *and* periodic tick up to that
time.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._checks import names
from .._clock import FakeClock
from .._errors import ConfigurationError, DrainIncomplete
from .._message import DEFAULT_QUEUE
from ..brokers import redact_url
from ..scheduler import Schedule, Scheduler
from ..worker import Worker
from ..worker._resolve import top_package
from ._left import Left, left

if TYPE_CHECKING:
    from .._app import Conveyor

_GUARD_EVERY = 0.005  # how often the guard looks at a running round's job count and time
_POLL_FIRST, _POLL_CAP = 0.02, 0.5  # real-clock waits when the broker does not say when
_LATE = 0.001  # wake a little after a job's eta, not at it
_TICKS_COUNTED = 10_000  # a cron schedule's ticks left before until= are counted up to this


@dataclass(frozen=True)
class DrainReport:
    """What a drain did and what it left.

    ``ran`` counts finished attempts (a job that failed twice and then succeeded counts 3);
    ``rounds`` how many times the queues were emptied; ``advanced`` how far a ``FakeClock``
    was moved (s); ``waited`` the real seconds spent waiting for scheduled jobs. ``scheduled``
    is how many jobs of the drained queues are still scheduled (only after ``advance=False``
    or ``until=``), the first of them due at ``next_eta`` (epoch seconds, None if none or
    the broker does not say). ``paused`` names the queues a drain left alone because they
    are paused (``app.pause``): their jobs stay queued until ``app.resume``.
    """

    ran: int
    rounds: int
    advanced: float = 0.0
    waited: float = 0.0
    scheduled: int = 0
    next_eta: float | None = None
    paused: tuple[str, ...] = ()


def drain(
    app: Conveyor,
    queues: Sequence[str] | None = None,
    *,
    advance: bool = True,
    until: float | dt.datetime | None = None,
    max_jobs: int = 10_000,
    max_rounds: int = 1_000,
    timeout: float = 30.0,
    trust: Sequence[str] = (),
    concurrency: int = 8,
) -> DrainReport:
    """Run jobs of ``queues`` (default: every queue the app or its broker knows), their
    retries, the jobs they enqueue and the periodic ticks that come due, until nothing is
    left to run; see the module docstring.

    ``advance=False``: run only what is due now (do not move a ``FakeClock`` nor wait for
    scheduled jobs). ``until`` (epoch seconds or an aware datetime; needs a ``FakeClock``):
    move the clock through every scheduled job and periodic tick up to that time, and leave
    it there. Bounds: ``max_jobs`` finished attempts, ``max_rounds`` rounds, ``timeout``
    real seconds; past any of them ``DrainIncomplete`` says what is left.

    Besides ``app.trust`` and ``trust``, the packages that define the app's registered tasks
    are trusted, as if a worker had been started with their module.
    """
    if queues is not None:
        queues = names("queues", queues, "drain(app, ['emails'])")
    trust = names("trust", trust, "drain(app, trust=['reports'])")
    limit = _limit(until)
    fake = app.clock if isinstance(app.clock, FakeClock) else None
    _check(advance, limit, fake)
    _check_bounds(max_jobs=max_jobs, max_rounds=max_rounds, timeout=timeout)
    run = _Drain(
        app,
        queues,
        fake=fake,
        limit=limit,
        max_jobs=max_jobs,
        max_rounds=max_rounds,
        timeout=timeout,
        trust=trust,
        concurrency=concurrency,
    )
    return run.run(advance)


class _Drain:
    def __init__(
        self,
        app: Conveyor,
        queues: Sequence[str] | None,
        *,
        fake: FakeClock | None,
        limit: float | None,
        max_jobs: int,
        max_rounds: int,
        timeout: float,
        trust: Sequence[str],
        concurrency: int,
    ) -> None:
        self.app = app
        self.fixed = list(queues) if queues is not None else None
        self.fake = fake
        self.limit = limit
        self.max_jobs, self.max_rounds, self.timeout = max_jobs, max_rounds, timeout
        self.trust = list(trust)
        self.concurrency = concurrency
        self.deadline = time.monotonic() + timeout
        self.scheduler = Scheduler(app) if app.schedules else None
        self.worker: Worker | None = None
        self.ran = self.rounds = 0
        self.advanced = self.waited = 0.0
        self.poll = _POLL_FIRST
        self.began = app.clock.time()

    def run(self, advance: bool) -> DrainReport:
        while True:
            if self._queues():
                self._round()
            rest = left(self.app.broker, self._queues())
            if not advance or not self._move_on(rest):
                return DrainReport(
                    self.ran,
                    self.rounds,
                    self.advanced,
                    self.waited,
                    rest.scheduled,
                    rest.next_eta,
                    tuple(sorted(self._paused())),
                )

    # -- one round ---------------------------------------------------------------------------

    def _round(self) -> None:
        if self.rounds == self.max_rounds:
            self._stop(*self._ticks_left() or self._rounds_spent())
        self.rounds += 1
        if self.scheduler is not None:
            self.scheduler.tick()
        worker = self._worker()
        before = worker.processed
        tripped, limited = _guarded(worker, before + self.max_jobs - self.ran, self.deadline)
        self.ran += worker.processed - before
        if tripped == "jobs":
            self._stop(
                f"that is over max_jobs={self.max_jobs} and the queues did not empty (a task "
                "that enqueues another job every time it runs never drains)",
                "pass drain(app, max_jobs=N) with a larger N, or fix the loop",
            )
        if tripped == "time":
            why = (
                f"the queues did not empty within timeout={self.timeout:g} s of real time "
                "(a job stuck on a sleep, a lock or another job's result?)"
            )
            fix = "pass drain(app, timeout=N) to allow longer"
            if limited and self.fake is not None:
                why += (
                    f"; the time limit of {', '.join(limited)} is on the FakeClock, which "
                    "does not move while a job runs: it will not fire"
                )
                fix += (
                    "; to test the time limit, have the mocked slow call move the clock "
                    "past it (clock.advance(seconds))"
                )
            self._stop(why, fix)

    def _rounds_spent(self) -> tuple[str, str]:
        return (
            f"that is max_rounds={self.max_rounds} and jobs keep coming due (a task that "
            "schedules itself again, or periodic ticks that keep failing and retrying)",
            f"pass drain(app, max_rounds=N) with a larger N{self._until_hint()}",
        )

    def _ticks_left(self) -> tuple[str, str] | None:
        """Why ``until=`` ran out of rounds when the periodic ticks it stopped at (a round
        each) took most of them, and the ``max_rounds`` that would reach it; else None."""
        if self.limit is None:
            return None
        now = self.app.clock.time()
        passed = sum(s.ticks_between(self.began, now, _TICKS_COUNTED) for s in self.app.schedules)
        if passed < self.max_rounds // 2:
            return None  # the rounds went to something else: jobs that keep coming due
        counts = sorted(
            ((s.ticks_between(now, self.limit, _TICKS_COUNTED), s) for s in self.app.schedules),
            key=lambda c: -c[0],
        )
        total = sum(n for n, _ in counts)
        if not total:
            return None
        named = "; ".join(f"{_schedule(s)}: {n:,}" for n, s in counts[:3] if n)
        capped = any(s.every is None and n >= _TICKS_COUNTED for n, s in counts)
        some = "at least" if capped else "about"
        return (
            f"that is max_rounds={self.max_rounds}, and until= stops the clock at every "
            f"periodic tick (a round each): {some} {total:,} are left before until ({named})",
            f"pass drain(app, until=..., max_rounds=N) with N over {self.max_rounds + total:,}; "
            "or clock.advance(seconds) then drain(app), which runs only each schedule's "
            "latest catch_up ticks",
        )

    def _worker(self) -> Worker:
        queues = self._queues()
        if self.worker is None or self.worker.queues != queues:
            self.worker = worker_for_tests(
                self.app, queues, concurrency=self.concurrency, grace=0.0, trust=self.trust
            )
        return self.worker

    def _queues(self) -> list[str]:
        """The queues to run: the ones asked for (or every one the app knows), but for those
        paused, whose jobs a drain leaves queued as a worker would."""
        if self.fixed is not None:
            known = set(self.fixed)
        else:
            known = set(task_queues(self.app)) | {s.queue for s in self.app.broker.stats()}
        return sorted(known - self._paused())

    def _paused(self) -> set[str]:
        paused = set(self.app.broker.paused())
        return paused if self.fixed is None else paused & set(self.fixed)

    # -- between rounds ------------------------------------------------------------------------

    def _move_on(self, rest: Left) -> bool:
        """Make the next thing come due (move the clock, or wait); False when there is none."""
        now = self.app.clock.time()
        if self.limit is not None:
            return self._step_until(rest, now)
        if rest.queued or rest.running:
            return True  # enqueued by someone else meanwhile: another round takes them
        if not rest.scheduled:
            return False
        if rest.next_eta is not None:
            if self.fake is not None:
                self._advance_to(rest.next_eta, now)
            else:
                self._wait_for(rest, rest.next_eta - now)
            return True
        if rest.parked == rest.scheduled:
            self._stop(
                f"{rest.scheduled} job(s) wait for jobs that have not ended (depends_on, or "
                "a later step of a workflow) and nothing else is left to run",
                self._waiting_hint(),
                rest,
            )
        if self.fake is not None:  # a broker that does not say when its jobs are due
            self._stop(
                f"{rest.scheduled} job(s) are scheduled on {redact_url(self.app.broker.url)}, "
                "which does not tell a drain when they are due, so it cannot move the FakeClock "
                "to them",
                "advance the clock yourself (clock.advance(seconds)) and drain again, use "
                "memory://, or drain(app, advance=False) to leave them",
                rest,
            )
        self._wait_for(rest, None)
        return True

    def _waiting_hint(self) -> str:
        """What to do for jobs waiting on jobs no drained queue runs: resume the paused
        queues (a drain leaves them alone), drain the queues left out."""
        hints = []
        if self.fixed is not None:
            hints.append(
                "drain the queues of the jobs they wait for too (drain(app) without queues= "
                "drains every queue the app knows)"
            )
        paused = sorted(self.app.broker.paused())
        if paused:
            resume = "; ".join(f"app.resume({q!r})" for q in paused)
            hints.append(
                f"resume the paused queue(s) {', '.join(paused)}, whose jobs a drain leaves "
                f"queued ({resume}), and drain again"
            )
        return "; or ".join(hints) or (
            "enqueue or drain the jobs they wait for (drain(app) without queues= drains "
            "every queue the app knows)"
        )

    def _step_until(self, rest: Left, now: float) -> bool:
        """Move the clock to the next job or periodic tick before the limit, else to the
        limit itself (one last round there); False once the clock is at the limit."""
        assert self.limit is not None
        if rest.queued or rest.running:
            return True
        if now >= self.limit:
            return False
        events = [t for t in (rest.next_eta, self._next_tick(now)) if t is not None]
        self._advance_to(min([*events, self.limit]), now)
        return True

    def _next_tick(self, now: float) -> float | None:
        return min((s.next_after(now) for s in self.app.schedules), default=None)

    def _advance_to(self, when: float, now: float) -> None:
        assert self.fake is not None
        if when > now:
            self.fake.set(when)
            self.advanced += when - now

    def _wait_for(self, rest: Left, seconds: float | None) -> None:
        """Sleep real time until a scheduled job is due (None: unknown; poll for it)."""
        room = self.deadline - time.monotonic()
        if seconds is None:
            seconds = min(self.poll, room)
            self.poll = min(self.poll * 1.5, _POLL_CAP)
        if seconds > room:
            self._stop(
                f"the next scheduled job is due in {seconds:.1f} s, past the drain's "
                f"wall-clock bound (timeout={self.timeout:g} s, {max(room, 0):.1f} s left). "
                "On a real clock a drain waits for scheduled jobs (a retry's backoff, delay=, "
                "eta=) only within that bound",
                "give the app a FakeClock (Conveyor('memory://', clock=FakeClock())) so the "
                "drain moves time instead of waiting; pass a larger timeout=; or "
                "drain(app, advance=False) to run only what is due now",
                rest,
            )
        if seconds > 0:
            time.sleep(seconds + _LATE)
            self.waited += seconds + _LATE

    # -- stopping ------------------------------------------------------------------------------

    def _until_hint(self) -> str:
        return "" if self.limit is not None else ", or drain(app, until=...) to stop at a time"

    def _stop(self, why: str, fix: str, rest: Left | None = None) -> None:
        if rest is None:
            rest = left(self.app.broker, self._queues())
        raise DrainIncomplete(
            f"drain stopped after {self.ran} attempt(s) in {self.rounds} round(s): {why}. "
            f"Left in {', '.join(self._queues())}: {rest.describe(self.app.clock.time())}. "
            f"To go on: {fix}."
        )


def task_queues(app: Conveyor) -> list[str]:
    """The default queue and every queue the app's registered tasks use."""
    return sorted({DEFAULT_QUEUE} | {t.opts.queue for t in app.registry.values()})


def worker_for_tests(
    app: Conveyor, queues: Sequence[str], *, concurrency: int, grace: float, trust: Sequence[str]
) -> Worker:
    """A worker for tests: besides ``trust``, the packages that define the app's registered
    tasks are trusted, as if it had been started with their module."""
    packages = {top_package(t.fn.__module__) for t in app.registry.values()}
    return Worker(
        app, queues, concurrency=concurrency, grace=grace, trust=[*trust, *sorted(packages)]
    )


def _guarded(worker: Worker, most: int, deadline: float) -> tuple[str | None, list[str]]:
    """Drain with ``worker`` until its queues are empty; stop it (and say why) once it has
    finished more than ``most`` attempts in all or the real-time ``deadline`` has passed.
    Past the deadline, also the jobs then running that have a time limit (``timeout=``)."""
    done = threading.Event()
    tripped: list[str] = []
    limited: list[str] = []

    def guard() -> None:
        while not done.wait(_GUARD_EVERY):
            why = "jobs" if worker.processed > most else None
            why = why or ("time" if time.monotonic() > deadline else None)
            if why is not None:
                tripped.append(why)
                if why == "time":
                    limited.extend(_time_limited(worker))
                worker.stop(graceful=False)
                return

    thread = threading.Thread(target=guard, name="conveyor-drain-guard", daemon=True)
    thread.start()
    try:
        worker.drain()
    finally:
        done.set()
        thread.join()
    return (tripped[0] if tripped else None), limited


def _time_limited(worker: Worker) -> list[str]:
    """``task (timeout=5 s)`` for each job ``worker`` is running that has a time limit."""
    running = [a.message for a in worker._inflight.holding() if a.slot and a.message]
    return sorted({f"{m.task} (timeout={m.timeout:g} s)" for m in running if m.timeout})


def _schedule(schedule: Schedule) -> str:
    """``minutely every=60 s`` or ``report cron='0 6 * * *'``, for messages."""
    if schedule.every is not None:
        return f"{schedule.name} every={schedule.every:g} s"
    return f"{schedule.name} cron={schedule.cron!r}"


def _limit(until: float | dt.datetime | None) -> float | None:
    if until is None:
        return None
    if isinstance(until, dt.datetime):
        if until.tzinfo is None:
            raise ConfigurationError(
                f"until={until!r} has no time zone: pass an aware datetime "
                "(datetime(..., tzinfo=UTC)) or epoch seconds"
            )
        return until.timestamp()
    if isinstance(until, bool) or not isinstance(until, int | float) or not math.isfinite(until):
        raise ConfigurationError(
            f"until takes epoch seconds (a finite number) or an aware datetime, got {until!r}"
        )
    return float(until)


def _check(advance: bool, limit: float | None, fake: FakeClock | None) -> None:
    if limit is not None and fake is None:
        raise ConfigurationError(
            "drain(until=...) moves the app's clock, so it needs a FakeClock: "
            "Conveyor('memory://', clock=FakeClock())"
        )
    if limit is not None and not advance:
        raise ConfigurationError("drain takes until= or advance=False, not both")
    if limit is not None and fake is not None and limit < fake.time():
        raise ConfigurationError(
            f"drain(until={limit}) is before the clock's time ({fake.time()}): "
            "a clock only moves forward"
        )


def _check_bounds(*, max_jobs: int, max_rounds: int, timeout: float) -> None:
    for name, value in (("max_jobs", max_jobs), ("max_rounds", max_rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
