"""``async def`` tasks on one event loop, in a thread of its own.

Each job is an asyncio task; cancel, the time limit and shutdown call ``task.cancel()``, and
the ``CancelledError`` is mapped back to why the worker cancelled it. Lease renewal does not
run on this loop, so a coroutine that blocks the loop delays other coroutines but never lets
a lease lapse.
"""

from __future__ import annotations

import asyncio
import threading

from .._codec import Codec
from .._errors import SoftTimeLimit
from ._attempt import TIMEOUT, Attempt, Result, Stopped, acall, make_current_job, raised, timed_out
from ._threads import Done, Report


class LoopRunner:
    def __init__(self, codec: Codec, done: Done, report: Report) -> None:
        self._codec = codec
        self._done = done
        self._report = report
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

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

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

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
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(2.0)

    async def _run(self, attempt: Attempt) -> None:
        try:
            result = await self._execute(attempt)
        except BaseException as exc:  # never lose a job to a bug in this wrapper
            result = raised(exc)
        self._done(attempt, result)

    async def _execute(self, attempt: Attempt) -> Result:
        assert attempt.fn is not None and attempt.message is not None
        message = attempt.message
        with attempt.lock:
            if attempt.stop == TIMEOUT:
                return timed_out(raised(SoftTimeLimit()), message.timeout)
            if attempt.stop is not None:
                return Stopped(attempt.stop)
            attempt.handle = asyncio.current_task()
        job = make_current_job(message, attempt.delivery, lambda v, n: self._report(attempt, v, n))
        try:
            return await acall(attempt.fn, message, job, self._codec)
        except asyncio.CancelledError as exc:
            if attempt.stop == TIMEOUT:
                return timed_out(raised(SoftTimeLimit()), message.timeout)
            if attempt.stop is not None:
                return Stopped(attempt.stop)
            return raised(exc)  # the task cancelled itself
        finally:
            with attempt.lock:
                attempt.handle = None
