"""``Worker``: runs jobs from some queues, at least once, until told to stop.

Threads of a running worker:

* the **consumer** (``run``'s caller, or a thread of its own when ``run`` is called from
  the main thread, which then only waits and handles signals): fetches into free slots;
* the **pool** (threads, an event loop, or child processes) runs the jobs;
* the **finisher** writes outcomes in batches;
* the **keeper** renews every held lease each ``lease / 3`` s (at least once a second: its
  answers carry cancels) and sends the heartbeat;
* the **deadline watchdog** enforces time limits.

Stopping (docs/reliability.md, "Graceful stop"): ``stop()`` (or the first SIGTERM/SIGINT)
stops fetching at once, lets running jobs finish for up to ``grace`` seconds, then hands
back the rest with ``release`` for immediate redelivery. ``stop(graceful=False)`` (or a
second signal) skips the wait.
Anything not handed back, because the process died or the broker was away, returns when
its lease expires: nothing is lost.

A broker that refuses the credentials (``BrokerAuthError``, seen by a fetch) or whose
storage is gone (``BrokerGone``: the SQLite file deleted or replaced, seen by a fetch or the
keeper's heartbeat) stops the worker at once, and ``run`` raises the error.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import _logging
from .._backoff import RANDOM, Backoff
from .._checks import names, refuse, seconds, whole
from .._errors import BrokerError, BrokerGone
from .._hooks import Hooks
from .._message import DEFAULT_QUEUE, WorkerInfo, validate_queue
from ..brokers import redact_url
from ..middleware import WorkerProcess
from ._attempt import SHUTDOWN, Results
from ._consumer import Consumer
from ._deadlines import Deadlines
from ._events import WorkerEvents
from ._finisher import Finisher
from ._inflight import BUFFER_PATIENCE, Inflight
from ._lease import Keeper
from ._leftovers import let_go
from ._middleware import consumer_factory
from ._outcome import Outcomes
from ._pools import POOLS, Executor, check_recycling
from ._resolve import Resolver, top_package, trusted_packages
from ._signals import in_main_thread, stop_signals, wait_for

if TYPE_CHECKING:
    from .._app import Conveyor

log = logging.getLogger("conveyor.worker")

FETCH_BLOCK = 1.0  # longest a fetch blocks; a stop is noticed within this
PREFETCH_SLOTS = 4  # the most a worker buffers, per run slot (see Inflight)...
PREFETCH_LEAST = 32  # ...or this many in all, if more: a worker of few slots
BROKER_RETRY_CAP = 5.0  # longest pause between attempts while the broker is away
_FINISH_PATIENCE = 2.0  # how long a stopping worker keeps trying to write results
SHUTDOWN_SPARE = 5.0  # seconds past the grace run() waits for the shutdown, then exits


def prefetch_for(pool: str, concurrency: int) -> int:
    """The most a worker of ``concurrency`` run slots buffers (``Inflight``'s prefetch).

    Buffered jobs start from memory when a slot frees (not for child processes, whose jobs
    are long enough that a fetch round trip does not matter). The buffer holds about
    PREFETCH_WINDOW of runs, at most PREFETCH_SLOTS per slot: for tiny jobs, fetches and
    finishes of ~70 instead of ~32 at -c 32 (server and worker ~2 µs less CPU per job
    each, bench/profile_drain.py --calls); and up to PREFETCH_LEAST whatever the slots:
    with 4 per slot, a single-slot worker fetched and finished ~5 tiny jobs a call and
    spent 48 µs of CPU per no-op job, against 19 with 32 and 13 with 128. Not more: a
    buffer filled while runs were short keeps its jobs when runs turn long, each then
    waiting behind the ones before it on this worker until ``BUFFER_PATIENCE`` hands them
    back (docs/architecture.md)."""
    if pool == "processes":
        return 0
    return max(PREFETCH_SLOTS * concurrency, PREFETCH_LEAST)


class _Ending:
    """One session's shutdown, done once by whichever thread comes to it first."""

    __slots__ = ("done", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False


class Worker:
    """Run jobs from ``queues`` of ``app``.

    ``pool``: ``threads`` (default), ``processes`` or ``async`` (see ``_pools``). ``lease``:
    seconds a job stays ours without renewal. ``grace``: seconds running jobs get to finish
    on stop. ``trust``: extra top-level packages whose callables may run by name, besides
    the package of ``module`` and ``app.trust``. A job delivered more than
    ``max_deliveries`` times without finishing is dead-lettered. With ``pool="processes"``,
    a child process is replaced by a fresh one after ``max_jobs_per_child`` jobs, or when its
    resident memory is above ``max_child_memory`` MiB after a job. ``rand`` (tests) draws the
    jitter of backoffs.
    """

    def __init__(
        self,
        app: Conveyor,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        *,
        concurrency: int = 8,
        pool: str = "threads",
        lease: float = 30.0,
        grace: float = 25.0,
        trust: Sequence[str] = (),
        max_deliveries: int = 5,
        module: str | None = None,
        max_jobs_per_child: int | None = None,
        max_child_memory: int | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        lease, grace = _check(
            queues,
            concurrency=concurrency,
            pool=pool,
            lease=lease,
            grace=grace,
            deliveries=max_deliveries,
            trust=trust,
            module=module,
            rand=rand,
        )
        check_recycling(pool, max_jobs_per_child, max_child_memory)
        self.max_jobs_per_child = max_jobs_per_child
        self.max_child_memory = max_child_memory
        self.app = app
        self.queues = [validate_queue(q) for q in queues]
        self.concurrency = concurrency
        self.pool = pool
        self.lease = lease
        self.grace = grace
        self.module = module
        self.trusted = trusted_packages(module, app.trust, trust)
        self.id = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self.started_at = 0.0
        self._rand = rand or RANDOM.random
        self._stopping = threading.Event()
        self._hard = threading.Event()
        self._stop_requested = 0.0
        self._hard_requested = 0.0  # when a hard stop came (a second signal)
        self._ending = _Ending()  # the session's (each session has its own)
        self._gone: BrokerGone | None = None  # seen by the keeper: raised by the session
        self._inflight = Inflight(concurrency, prefetch=prefetch_for(pool, concurrency))
        self._events = WorkerEvents(self.id, app.clock) if app.events else None
        # The app's middleware as it is now; None: no middleware, and nothing on any path.
        self._hooks = Hooks(app.middleware) if app.middleware else None
        self._consumer: Consumer = consumer_factory(self._hooks, pool)(
            app=app,
            broker=app.broker,
            queues=self.queues,
            name=self.id,
            lease=self.lease,
            max_deliveries=max_deliveries,
            codec=app.codec,
            results=Results(app.codec, app.max_result),
            clock=app.clock,
            resolver=Resolver(app.registry, self.trusted),
            outcomes=Outcomes(app.codec, app.clock, self._rand),
            inflight=self._inflight,
            backoff=self._backoff(),
            pause=self._stopping.wait,
            events=self._events,
        )
        self._keeper: Keeper | None = None
        self._scheduler: threading.Thread | None = None
        self._announce: bool | None = None  # set: the rest of the start waits for a fetch
        # The code this worker runs logs at the level chosen for Conveyor's own lines.
        tasks = {top_package(t.fn.__module__) for t in app.registry.values()}
        _logging.attach(self.trusted | tasks)

    def __repr__(self) -> str:
        return f"<Worker {self.id} {','.join(self.queues)} {self.pool}x{self.concurrency}>"

    @property
    def process(self) -> WorkerProcess:
        """What the lifecycle hooks of middleware are told about this worker."""
        return WorkerProcess(self.id, tuple(self.queues), self.pool, self.concurrency)

    @property
    def processed(self) -> int:
        """Jobs this worker has finished (any outcome) since it was made."""
        return self._inflight.processed

    # -- public ----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until ``stop()`` or SIGTERM/SIGINT (handled only when called in the main thread).

        A broker that is away is waited for; one that refuses the credentials or a permission
        (``BrokerAuthError``) is not, nor one whose data does not fit the URL
        (``ConfigurationError``, e.g. a plain URL on a sharded Redis prefix): running jobs are
        handed back and the error is raised (``conveyor worker`` exits 1 with its message).
        Nor is an SQLite file deleted or replaced under the worker (``BrokerGone``): it stops
        at once and raises that. Called
        in the main thread, it owns the process: threads that tasks started and left running
        are named at WARNING when it returns, and the interpreter does not wait for them at
        exit (see ``_leftovers``)."""
        if not in_main_thread():
            self._session(until_idle=False, deadline=None)
            return
        before = threading.enumerate()
        errors: list[BaseException] = []

        def body() -> None:
            try:
                self._session(until_idle=False, deadline=None)
            except BaseException as exc:
                errors.append(exc)

        with stop_signals() as received:
            # A daemon: should it outlast the stop (a job it runs itself, a broker that does
            # not answer), the process does not wait for it at exit either.
            thread = threading.Thread(target=body, name="conveyor-worker", daemon=True)
            thread.start()
            wait_for(thread, received, self._on_signal, self._overdue)  # signals, handled
            if thread.is_alive() and self._consumer.here is not None and not self._out_of_time():
                # Shut down as the session would, from a thread of its own: its calls to
                # the broker are bounded by the time left too.
                closer = threading.Thread(
                    target=self._take_over, name="conveyor-shutdown", daemon=True
                )
                closer.start()
                wait_for(closer, received, self._on_signal, self._out_of_time)
                thread = closer
            if thread.is_alive():
                log.error(
                    "the worker's shutdown did not end %g s after the stop's grace (the "
                    "broker does not answer?): exiting without it; the jobs it held run again "
                    "once their leases lapse",
                    SHUTDOWN_SPARE,
                )
        let_go(before, "the worker")  # threads tasks left must not keep this process alive
        if errors:
            raise errors[0]

    def stop(self, graceful: bool = True) -> None:
        """Stop fetching; running jobs get ``grace`` seconds unless ``graceful`` is False."""
        if not self._stopping.is_set():
            self._stop_requested = time.monotonic()
        self._stopping.set()
        if not graceful:
            self._harden()
        self._inflight.halt()  # buffered jobs do not start; they are handed back
        self._inflight.wake(close=not graceful)

    def drain(self, timeout: float | None = None) -> int:
        """Run jobs, from the calling thread, until ``queues`` have nothing queued or running;
        return how many jobs finished. Jobs scheduled for later, and those of a paused
        queue, are left alone. Raises ``TimeoutError`` (after handing back what still runs)
        if ``timeout`` passes."""
        if timeout is not None:
            timeout = seconds("timeout", timeout, example="drain(timeout=30)")
        before = self.processed
        deadline = None if timeout is None else time.monotonic() + timeout
        self._session(until_idle=True, deadline=deadline)
        return self.processed - before

    # -- one session: start, loop, shut down ------------------------------------------------

    def _session(self, until_idle: bool, deadline: float | None) -> None:
        self._gone = None
        self._start(announce=not until_idle)
        ending = self._ending = _Ending()
        try:
            self._loop(until_idle, deadline, ending)
            if self._gone is not None:
                raise self._gone
        except BaseException:
            self._harden()  # a timed-out drain or a crash: hand back at once
            raise
        finally:
            self._end(ending)

    def _end(self, ending: _Ending) -> None:
        """Shut the session down and ready the worker for another, once: from the session's
        thread, or from ``run``'s main thread taking over (``_take_over``), whichever comes
        first."""
        with ending.lock:
            if ending.done:
                return
            ending.done = True
            try:
                self._shutdown()
            finally:
                self._stopping.clear()
                self._hard.clear()
                self._inflight.reopen()

    def _start(self, announce: bool) -> None:
        app, consumer = self.app, self._consumer
        self.started_at = app.clock.time()
        if self._events is not None:
            self._events.worker("worker.online", self._info())
        if self._hooks is not None:
            self._hooks.worker_start(self.process)
        executor = Executor(
            self.pool,
            self.concurrency,
            consumer.results,
            consumer.complete,
            consumer.progress,
            spec=self.module,
            trusted=self.trusted,
            backoff=self._backoff(),
            halted=self._stopping.is_set,
            abandon=consumer.abandon,
            max_jobs_per_child=self.max_jobs_per_child,
            max_child_memory=self.max_child_memory,
            worker=self.process,
            arm=consumer.arm,
        )
        executor.start()
        consumer.executor = executor
        consumer.finisher = Finisher(app.broker, self._inflight, self._backoff(), self._events)
        consumer.deadlines = Deadlines(app.clock, executor.interrupt)
        self._keeper = Keeper(
            app.broker,
            self._inflight,
            self.lease,
            interrupt=executor.interrupt,
            info=self._info,
            gone=self._on_gone,
            beat=self._heartbeat_event if self._events is not None else None,
        )
        consumer.finisher.start()
        consumer.deadlines.start()
        if announce:
            self._banner()
        self._announce = announce  # the rest waits for the first fetch: see _start_rest

    def _start_rest(self) -> None:
        """What need not delay the first job, started once the first fetch (which does not
        block) has answered: the keeper (its first act is the heartbeat), the check of the
        broker's setup and the scheduler. A worker with jobs waiting starts the first of
        them a round trip or two sooner, and no other start-up call competes with that
        fetch."""
        announce, self._announce = self._announce, None
        if announce is None:
            return
        assert self._keeper is not None
        self._keeper.start()
        if announce:
            self._warn_setup()
            self._start_scheduler()

    def _start_scheduler(self) -> None:
        """Every worker runs the app's periodic schedules; each tick runs once however many
        workers do (the scheduler claims ticks in the broker)."""
        if not self.app.schedules:
            return
        from ..scheduler import Scheduler  # cron and time zones: only for an app with schedules

        self._scheduler = threading.Thread(
            target=Scheduler(self.app).run,
            args=(self._stopping,),
            name="conveyor-scheduler",
            daemon=True,
        )
        self._scheduler.start()

    def _loop(self, until_idle: bool, deadline: float | None, ending: _Ending) -> None:
        consumer, inflight = self._consumer, self._inflight
        while not self._stopping.is_set() and not ending.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"drain: the queues {self.queues} did not empty in time")
            free = inflight.wait_free(FETCH_BLOCK)
            stale = inflight.take_stale(BUFFER_PATIENCE)
            if stale:
                log.info(
                    "%d buffered job(s) still wait for a run slot %g s after their fetch (the "
                    "runs turned long): handing them back for a free worker",
                    len(stale),
                    BUFFER_PATIENCE,
                )
                consumer.release(stale)
                continue
            if free <= 0 or self._stopping.is_set():
                continue
            # The first fetch does not block: what waits for it starts at once on an idle queue.
            starting = self._announce is not None
            deliveries = consumer.fetch(free, 0.0 if until_idle or starting else FETCH_BLOCK)
            if deliveries is None:
                if starting:
                    self._start_rest()
                continue
            if self._stopping.is_set():
                consumer.hand_back(deliveries)  # fetched while the stop arrived
                return
            consumer.dispatch(deliveries)
            if starting:
                self._start_rest()  # the first jobs run meanwhile
            if until_idle and not deliveries:
                if self._idle():
                    return
                inflight.wait_change(0.05)

    def _idle(self) -> bool:
        if len(self._inflight):
            return False
        try:
            stats = {s.queue: s for s in self.app.broker.stats()}
        except BrokerError:
            return False
        # A paused queue's queued jobs wait for resume, as scheduled ones for their time.
        return all(
            stats[q].running == 0 and (stats[q].paused or stats[q].queued == 0)
            for q in self.queues
            if q in stats
        )

    def _shutdown(self) -> None:
        consumer, inflight = self._consumer, self._inflight
        assert consumer.executor is not None and consumer.finisher is not None
        if not self._hard.is_set() and len(inflight):
            # The grace period counts from the stop request, not from when fetching ended.
            left = self.grace - (time.monotonic() - self._stop_requested)
            if left > 0:  # not "waiting up to -0.1 s": the grace was out as fetching ended
                log.info("waiting up to %.1f s for %d running job(s)", left, len(inflight))
                inflight.wait_empty(left)
        remaining = inflight.take_running()
        for attempt in remaining:
            consumer.executor.interrupt(attempt, SHUTDOWN)
        consumer.release(remaining)
        consumer.finisher.stop(1.0 if self._hard.is_set() else _FINISH_PATIENCE)
        self._announce = None  # stopped before its first fetch: the rest never started
        if self._keeper is not None:
            self._keeper.stop()
        if self._scheduler is not None:
            self._scheduler.join(5.0)  # it watches the stopping event
            self._scheduler = None
        if consumer.deadlines is not None:
            consumer.deadlines.stop()
        if self._events is not None:  # what waits, the handed back jobs, and the goodbye
            self._events.worker("worker.offline", self._info())
            if not self._events.publish(self.app.broker.publish, 0.0):
                log.warning("the worker's last events were not published")
        try:
            self.app.broker.forget_worker(self.id)
        except Exception as exc:
            log.debug("cannot remove the worker's announcement: %s", exc)
        consumer.executor.shutdown()
        if self._hooks is not None:
            self._hooks.worker_stop(self.process)
        log.debug("worker %s stopped after %d job(s)", self.id, self.processed)

    # -- helpers ---------------------------------------------------------------------------

    def _overdue(self) -> bool:
        """A stop's grace (none for a second signal) ran out while a job runs in the
        session's own thread (``Consumer.here``), which nothing but its return would end;
        or the session's shutdown overran it by ``SHUTDOWN_SPARE`` (``_out_of_time``)."""
        late = self._past_grace()
        return late is not None and (
            late >= SHUTDOWN_SPARE or (late >= 0 and self._consumer.here is not None)
        )

    def _out_of_time(self) -> bool:
        """A stopping worker's own calls (results, hand-backs, goodbye) took the grace and
        ``SHUTDOWN_SPARE`` more: a broker that stopped answering holds each one up for its
        socket timeout and retries, and the process would outlive the platform's patience."""
        late = self._past_grace()
        return late is not None and late >= SHUTDOWN_SPARE

    def _harden(self) -> None:
        """Hand back what runs at once (``_hard``), from now."""
        if not self._hard.is_set():
            self._hard_requested = time.monotonic()
            self._hard.set()

    def _past_grace(self) -> float | None:
        """Seconds since a requested stop's grace ran out (negative: within it); None
        without a stop. A hard stop (a second signal) ends the grace when it comes."""
        if not self._stopping.is_set():
            return None
        ended = self._stop_requested + self.grace
        if self._hard.is_set():
            ended = min(ended, self._hard_requested)
        return time.monotonic() - ended

    def _take_over(self) -> None:
        """Shut down from a thread ``run`` starts, as the session would, while the session's
        thread still runs a job (``_overdue``): the job is interrupted and handed back like
        one on a pool thread, and the session's thread is not waited for."""
        attempt = self._consumer.here
        if attempt is not None:
            log.warning(
                "job %s (%s) runs in the worker's own thread past the stop's grace: handing "
                "it back and stopping without it",
                attempt.job_id,
                attempt.name,
            )
        self._end(self._ending)

    def _on_signal(self, signum: int, count: int) -> None:
        name = signal.Signals(signum).name
        if count == 1:
            log.info(
                "%s: stopping; running jobs have %g s to finish (send it again to stop now)",
                name,
                self.grace,
            )
            self.stop(graceful=True)
        else:
            log.warning("%s again: handing back the running jobs and stopping now", name)
            self.stop(graceful=False)

    def _heartbeat_event(self, info: WorkerInfo) -> None:
        assert self._events is not None
        self._events.worker("worker.heartbeat", info)

    def _warn_setup(self) -> None:
        """The broker's word on its setup (an evicting or a full Redis), once at start."""
        try:
            found = self.app.broker.warnings()
        except BrokerError as exc:  # away at start: the fetch loop waits and reports it
            log.debug("cannot check the broker's setup: %s", exc)
            return
        for line in found:
            log.warning("%s", line)

    def _on_gone(self, exc: BrokerGone) -> None:
        """The keeper found the broker's storage gone: nothing this worker writes can reach
        anyone. Stop at once; the running jobs are interrupted (their leases are in the old
        file, see docs/reliability.md)."""
        if self._gone is None:
            self._gone = exc
            log.error("the broker's storage was deleted or replaced: stopping at once")
        self.stop(graceful=False)

    def _backoff(self) -> Backoff:
        return Backoff(0.1, BROKER_RETRY_CAP, self._rand)

    def _info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            pool=self.pool,
            started_at=self.started_at,
            processed=self.processed,
            busy=self._inflight.active,
        )

    def _banner(self) -> None:
        log.info(
            "conveyor worker %s: queues %s, pool %s, concurrency %d, lease %g s, "
            "grace %g s, trusted packages %s, broker %s",
            self.id,
            ",".join(self.queues),
            self.pool,
            self.concurrency,
            self.lease,
            self.grace,
            ",".join(sorted(self.trusted)) or "(none)",
            redact_url(self.app.broker.url or self.app.url),
        )


MIN_LEASE = 0.1  # seconds; the keeper renews every lease / 3, so shorter is a busy loop
MAX_CONCURRENCY = 10_000
MAX_DELIVERIES = 10_000


def _check(
    queues: Sequence[str],
    *,
    concurrency: int,
    pool: str,
    lease: float,
    grace: float,
    deliveries: int,
    trust: Sequence[str],
    module: str | None,
    rand: Callable[[], float] | None,
) -> tuple[float, float]:
    """Every setting's type and range, with the rules options of jobs follow (``_checks``);
    returns the lease and the grace period in seconds."""
    if names("queues", queues, "queues=['default', 'images']") == ():
        raise refuse("queues", queues, "queues takes a non-empty list", "queues=['default']")
    whole("concurrency", concurrency, 1, MAX_CONCURRENCY, "concurrency=8")
    if not isinstance(pool, str) or pool not in POOLS:
        raise refuse(
            "pool", pool, "unknown pool: use threads, processes or async", "pool='threads'"
        )
    lease = seconds("lease", lease, least=MIN_LEASE, example="lease=30")
    grace = seconds("grace", grace, example="grace=25")
    whole("max_deliveries", deliveries, 1, MAX_DELIVERIES, "max_deliveries=5")
    names("trust", trust, "trust=['myapp']")
    if module is not None and not isinstance(module, str):
        raise refuse("module", module, "module takes a module name", "module='myapp.tasks'")
    if rand is not None and not callable(rand):
        raise refuse("rand", rand, "rand takes a function returning [0, 1)", "rand=random.random")
    return lease, grace
