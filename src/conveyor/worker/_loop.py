"""``async def`` tasks on one event loop, in a thread of its own.

Each job is an asyncio task; cancel, the time limit and shutdown call ``task.cancel()``, and
the ``CancelledError`` is mapped back to why the worker cancelled it. Lease renewal does not
run on this loop, so a coroutine that blocks the loop delays other coroutines but never lets
a lease lapse.

A coroutine that blocks the loop (``time.sleep``, a busy loop, a blocking client) cannot be
interrupted: cancel, its time limit and other async jobs all wait until it awaits. The
watch thread notices a loop that has not run its heartbeat for ``BLOCKED`` seconds and says
at WARNING which job holds it, once per stall.

Shutdown comes after the stop's grace, with the jobs still running cancelled: they and any
task they started get ``CLEANUP`` seconds more for what they await on the way out
(``finally: await conn.close()``), then the loop closes its async generators and its
default executor (as ``asyncio.run`` does, each bounded too) and stops. A task that ignores
its cancellation, or blocks the loop, is not waited for beyond that.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from .._errors import SoftTimeLimit
from ._attempt import (
    TIMEOUT,
    Attempt,
    Result,
    Results,
    Stopped,
    acall,
    make_current_job,
    raised,
    timed_out,
)
from ._joblog import log_job
from ._threads import Done, Report

log = logging.getLogger("conveyor.worker")

BEAT = 1.0  # seconds between the loop's heartbeats
BLOCKED = 5.0  # seconds without a heartbeat after which a blocked loop is reported
CLEANUP = 1.0  # seconds for each shutdown step: cancelled tasks, async generators, executor


class LoopRunner:
    def __init__(self, results: Results, done: Done, report: Report) -> None:
        self._results = results
        self._done = done
        self._report = report
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running: dict[asyncio.Task[Any], Attempt] = {}  # for the blocked-loop line
        self._beat_at = 0.0
        self._closed = threading.Event()  # a new one per start: each watch thread has its own

    @property
    def started(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._serve, args=(loop,), name="conveyor-asyncio", daemon=True
            )
            self._thread.start()
            self._loop = loop
            self._closed = threading.Event()
            self._beat_at = time.monotonic()
            loop.call_soon_threadsafe(self._beat, loop)
            threading.Thread(
                target=self._watch,
                args=(loop, self._closed),
                name="conveyor-asyncio-watch",
                daemon=True,
            ).start()

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        self._beat_at = time.monotonic()
        loop.call_later(BEAT, self._beat, loop)

    def _watch(self, loop: asyncio.AbstractEventLoop, closed: threading.Event) -> None:
        reported = 0.0  # the heartbeat a stall was reported after: one line per stall
        while not closed.wait(BEAT):
            beat_at = self._beat_at
            stalled = time.monotonic() - beat_at
            if stalled < BLOCKED or beat_at == reported:
                continue
            reported = beat_at
            task = asyncio.current_task(loop)  # a dict read: safe from this thread
            attempt = self._running.get(task) if task is not None else None
            if attempt is None:
                log.warning("the event loop of async tasks has been blocked for %.0f s by "
                            "code that does not await", stalled)  # fmt: skip
                continue
            log_job(
                logging.WARNING,
                attempt,
                "job %s (%s) has blocked the event loop for %.0f s: other async jobs, its "
                "cancel and its time limit wait until it awaits. Blocking calls in an "
                "async def belong in `await asyncio.to_thread(...)`; or make it a plain def",
                attempt.job_id,
                attempt.name,
                stalled,
            )

    def submit(self, attempt: Attempt) -> None:
        self.start()
        loop = self._loop
        assert loop is not None
        if self._thread is threading.current_thread():
            # A job that ended on the loop handed its slot to a buffered one: no wake-up
            # through the loop's self-pipe, no cross-thread future.
            loop.create_task(self._run(attempt))
        else:
            asyncio.run_coroutine_threadsafe(self._run(attempt), loop)

    def interrupt(self, attempt: Attempt, why: str) -> None:
        with attempt.lock:
            if attempt.stop is not None:
                return
            attempt.stop = why
            task = attempt.handle
        if isinstance(task, asyncio.Task) and self._loop is not None:
            self._loop.call_soon_threadsafe(task.cancel)

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            wind_down = _wind_down(loop)
            try:
                asyncio.run_coroutine_threadsafe(wind_down, loop)
            except RuntimeError:  # its thread ended and closed it: nothing left to wind down
                wind_down.close()
        if self._thread is not None:
            self._thread.join(3 * CLEANUP + 1.0)

    async def _run(self, attempt: Attempt) -> None:
        try:
            result = await self._execute(attempt)
        except BaseException as exc:  # never lose a job to a bug in this wrapper
            result = raised(exc)
        try:
            self._done(attempt, result)
        except Exception:  # the loop goes on with its other jobs
            log_job(logging.ERROR, attempt, "job %s: cannot record how it ended",
                    attempt.job_id, exc_info=True)  # fmt: skip

    async def _execute(self, attempt: Attempt) -> Result:
        assert attempt.fn is not None and attempt.message is not None
        message = attempt.message
        with attempt.lock:
            if attempt.stop == TIMEOUT:
                return timed_out(raised(SoftTimeLimit()), message.timeout)
            if attempt.stop is not None:
                return Stopped(attempt.stop)
            attempt.handle = task = asyncio.current_task()
        assert task is not None
        self._running[task] = attempt
        job = make_current_job(message, attempt.delivery, lambda v, n: self._report(attempt, v, n))
        try:
            return await acall(attempt.fn, message, job, self._results)
        except asyncio.CancelledError as exc:
            if attempt.stop == TIMEOUT:
                return timed_out(raised(SoftTimeLimit()), message.timeout)
            if attempt.stop is not None:
                return Stopped(attempt.stop)
            return raised(exc)  # the task cancelled itself
        finally:
            self._running.pop(task, None)
            with attempt.lock:
                attempt.handle = None


async def _wind_down(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop's tasks finish their cancellation, close its async generators and its
    default executor, each for up to ``CLEANUP`` seconds; then stop it."""
    try:
        tasks = asyncio.all_tasks(loop) - {asyncio.current_task(loop)}
        for task in tasks:
            # A job's task was cancelled already: cancelled again, its own cleanup (what it
            # awaits in ``finally``) would be cut short. Tasks it started were not.
            if not task.cancelling():
                task.cancel()
        if tasks and not await _within(tasks):
            log.warning("async task(s) still running %.0f s after their cancellation; "
                        "closing the event loop without them", CLEANUP)  # fmt: skip
        for step in (loop.shutdown_asyncgens, loop.shutdown_default_executor):
            if not await _within({loop.create_task(step())}):
                log.warning("the event loop's %s did not finish within %.0f s",
                            step.__name__, CLEANUP)  # fmt: skip
    finally:
        loop.stop()


async def _within(tasks: set[asyncio.Task[Any]]) -> bool:
    """Whether the tasks end within ``CLEANUP`` seconds. Not ``wait_for``: it cancels on
    timeout and then waits for the cancellation, without a bound, for a task ignoring it."""
    _, pending = await asyncio.wait(tasks, timeout=CLEANUP)
    return not pending
