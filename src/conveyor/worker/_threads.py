"""Sync tasks on a fixed set of threads, stoppable from outside.

A thread cannot be killed, so cancel, the soft time limit and shutdown raise an exception
*inside* the task's thread with ``PyThreadState_SetAsyncExc``: ``SoftTimeLimit`` (which the
task may catch to clean up) or ``Interrupted`` (a ``BaseException``). The exception arrives at
the next bytecode the thread runs, so a task blocked inside one long C call (``time.sleep``,
a socket read without a timeout) sees it only when that call returns; a time limit that must
hold regardless needs ``--pool processes``.

The exception is aimed only while the task runs: the target thread is recorded under the
attempt's lock just before the call and cleared just after, and clearing also cancels an
exception that was set but not yet raised, so it can never hit the next job on that thread.
What the task produced is encoded (or its exception described) only after the clear: an
exception meant for the task never lands in the codec, which would take it for the value's
fault. One that lands as the task returns, before the clear, is its failure.
The same holds for ``run_here``: the consumer runs a tiny job in its own thread that way
when the worker is otherwise idle (``_consumer.py``), and cancel and time limits reach it
exactly as they reach a pool thread.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable

from .._errors import SoftTimeLimit
from ._attempt import (
    TIMEOUT,
    Attempt,
    Result,
    Results,
    Stopped,
    invoke,
    make_current_job,
    raised,
    timed_out,
)
from ._describe import Interrupted
from ._joblog import log_job

log = logging.getLogger("conveyor.worker")

_MAIN = threading.main_thread().ident  # the thread signal handlers run on (KeyboardInterrupt)


def _main_after_fork() -> None:
    # A child forked from another thread runs on that one, which is its main thread now
    # (``threading``'s own after-fork hook, registered before this one, has made it so):
    # with a stale ``_MAIN`` a Ctrl-C in its ``app.drain()`` could land after the bare
    # acquire, and the run's ``finally`` then waited for that lock for ever.
    global _MAIN
    _MAIN = threading.main_thread().ident


os.register_at_fork(after_in_child=_main_after_fork)

Done = Callable[[Attempt, Result], None]
Report = Callable[[Attempt, float, str | None], None]
Abandon = Callable[[Attempt], None]  # a job let go without an outcome


class _Unstick(BaseException):
    """Aimed by a thread at itself, and caught at once: see ``_clear_pending``."""


def _clear_pending(ident: int) -> None:
    """Cancel an exception aimed at this thread (``ident``, the caller's) and not raised yet.

    On CPython 3.11 the clear leaves the interpreter's signal of a pending async exception
    set (only delivering one resets it), and from then on a traced call in any thread (a
    debugger, a coverage tool) spun for ever: so, there, one is aimed and delivered here,
    at the backward jump of a short loop, where 3.11 checks for it. Not on the main thread
    (``app.drain()``'s job), where signal handlers run first at that check: a Ctrl-C left
    it pending to fire later elsewhere, and a handler of the program's own was skipped."""
    _set_async_exc(ident, None)
    if sys.version_info[:2] == (3, 11) and ident != _MAIN:
        try:
            _set_async_exc(ident, _Unstick)
            for _ in range(8):
                pass
        except _Unstick:
            pass


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> None:
    # exc=None clears a pending exception (the C API takes NULL, which ctypes passes for None)
    import ctypes  # here: only a stopped job needs it, and it costs start-up time

    arg = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), arg)


class ThreadRunner:
    """``size`` threads that run the sync jobs ``submit`` queues. ``arm(attempt)``, if given,
    is called as a thread takes a job: where jobs may wait for a thread (the async pool's
    few threads), its time limit starts then, not while it waited."""

    def __init__(
        self,
        size: int,
        results: Results,
        done: Done,
        report: Report,
        arm: Callable[[Attempt], None] | None = None,
    ) -> None:
        self._size = size
        self._arm = arm
        self._results = results
        self._done = done
        self._report = report
        self._queue: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._full = False
        self._growing = threading.Lock()  # submit may come from any thread (Inflight.start)

    def start(self) -> None:
        """Nothing yet: a thread is started with each of the first ``size`` jobs (``submit``),
        so the first job waits for one thread to start, not for the whole pool."""
        self._full = False

    def submit(self, attempt: Attempt) -> None:
        # Grown first: if no thread can start and none runs, submit raises with the job not
        # queued (the consumer lets it go: a thread started later must not run it after all).
        if not self._full:
            try:
                self._grow()
            except Exception:
                if not self._threads:
                    raise
                log.warning("cannot start another job thread; the %d started run the jobs",
                            len(self._threads), exc_info=True)  # fmt: skip
        self._queue.put(attempt)

    def _grow(self) -> None:
        # Under a lock, and counted before it starts (``start`` waits for the new thread,
        # letting others run): the consumer and a job thread starting a buffered job
        # (``Inflight.start``) once grew the pool at once past its size.
        with self._growing:
            if self._full:
                return
            t = threading.Thread(
                target=self._work, name=f"conveyor-job-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
            self._full = len(self._threads) >= self._size
        try:
            t.start()
        except BaseException:  # not started (can't start new thread): not counted either
            with self._growing:
                if t in self._threads:  # not if a shutdown cleared the list meanwhile
                    self._threads.remove(t)
                self._full = len(self._threads) >= self._size
            raise

    def interrupt(self, attempt: Attempt, why: str) -> None:
        with attempt.lock:
            if attempt.stop is not None:
                return
            attempt.stop = why
            if isinstance(attempt.handle, int):
                _set_async_exc(attempt.handle, SoftTimeLimit if why == TIMEOUT else Interrupted)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        # Threads still running a job are daemons, and their jobs were handed back already:
        # they are not waited for.
        self._threads.clear()

    def _work(self) -> None:
        while (attempt := self._queue.get()) is not None:
            try:
                if self._arm is not None:
                    self._arm(attempt)
                run_here(attempt, self._results, self._done, self._report)
            except BaseException:  # whatever happened, the pool keeps this thread
                log_job(logging.ERROR, attempt, "job %s: the thread pool failed to record it",
                        attempt.job_id, exc_info=True)  # fmt: skip


def run_here(attempt: Attempt, results: Results, done: Done, report: Report) -> None:
    """Run a sync job in the calling thread, then report how it ended to ``done``."""
    try:
        result = _execute(attempt, results, report)
    except BaseException as exc:  # a bug here must not cost the pool a thread
        log_job(logging.ERROR, attempt, "job %s: the thread pool failed to run it",
                attempt.job_id, exc_info=True)  # fmt: skip
        result = raised(exc)
    done(attempt, result)


def _execute(attempt: Attempt, results: Results, report: Report) -> Result:
    assert attempt.fn is not None and attempt.message is not None
    ident = threading.get_ident()
    message = attempt.message
    job = make_current_job(message, attempt.delivery, lambda v, n: report(attempt, v, n))
    # ``handle`` is set and cleared inside one ``try``: however the run ends, nothing is left
    # aimed at this thread.
    lock = attempt.lock
    try:
        try:
            if ident != _MAIN:
                # A bare acquire and release, not ``with`` (~1,000 instructions per job):
                # nothing is aimed at this thread before ``handle`` is set, under this lock,
                # and no signal handler runs on it, so nothing can land in between.
                lock.acquire()
                stop = attempt.stop
                if stop is None:
                    attempt.handle = ident
                lock.release()
            else:
                # The main thread (``app.drain()`` runs a tiny job in the consumer's thread):
                # a Ctrl-C's KeyboardInterrupt can land right after ``acquire`` returns, and
                # left the lock held (a time limit then blocked the watchdog on it for
                # ever), but not between ``with`` taking the lock and its block.
                with lock:
                    stop = attempt.stop
                    if stop is None:
                        attempt.handle = ident
            if stop is None:
                value = invoke(attempt.fn, message, job)
        finally:
            with lock:
                # Cleared only if it was aimed at (``handle`` set): a job stopped before it
                # ran clears nothing (a clear costs more on CPython 3.11: _clear_pending).
                if attempt.handle is not None:
                    attempt.handle = None
                    if attempt.stop is not None:
                        _clear_pending(ident)
    except Interrupted:
        return Stopped(attempt.stop or "interrupted")
    except BaseException as exc:  # the task's, or a SoftTimeLimit raised as it returned
        result: Result = raised(exc)
    else:
        if stop is not None:
            if stop == TIMEOUT:  # it waited for a thread past its deadline
                return timed_out(raised(SoftTimeLimit()), message.timeout)
            return Stopped(stop)
        result = results.returned(message.task, value)
    if attempt.stop == TIMEOUT:
        return timed_out(result, message.timeout)
    return result
