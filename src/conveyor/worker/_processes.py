"""Jobs in child processes: real parallelism for CPU-bound tasks, and hard time limits.

Children are started with ``spawn`` (never ``fork`` of this threaded parent) and import the
app module themselves; they never touch the broker. Each runs one job at a time, sent over a
pipe; progress and the result come back over it. The parent kills a child to enforce a time
limit, cancel a job or stop at the end of the grace period, and starts a replacement.

Children ignore SIGINT and SIGTERM: Heroku and a terminal's Ctrl-C signal the whole process
group, and the parent decides what happens to the jobs. A child whose parent dies sees its
pipe close and exits at once, abandoning its job to lease expiry like any crashed worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from .._backoff import Backoff
from .._errors import ConfigurationError
from ._attempt import CANCEL, SHUTDOWN, TIMEOUT, Attempt, Result, Stopped, synthetic, timed_out
from ._child import child_main
from ._threads import Done, Report

log = logging.getLogger("conveyor.worker")

_READY_TIMEOUT = 120.0  # importing a big app in a fresh interpreter can take a while


class _Child:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.attempt: Attempt | None = None
        self.killed: str | None = None  # why the parent killed it


class ProcessRunner:
    def __init__(
        self,
        size: int,
        spec: str,
        trusted: frozenset[str],
        *,
        done: Done,
        report: Report,
        backoff: Backoff,
    ) -> None:
        self._size = size
        self._spec = spec
        self._trusted = trusted
        self._done = done
        self._report = report
        self._backoff = backoff
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._closing = False
        starting = [self._spawn() for _ in range(self._size)]
        for child in starting:
            error = self._await_ready(child)
            if error is not None:
                self.shutdown()
                raise ConfigurationError(f"a worker process could not load {self._spec!r}: {error}")
            self._adopt(child)

    def shutdown(self) -> None:
        with self._lock:
            self._closing = True
            children = list(self._children)
        for child in children:
            with contextlib.suppress(OSError):
                child.conn.send(None)  # finish up and exit
        deadline = time.monotonic() + 3.0
        for child in children:
            child.process.join(max(deadline - time.monotonic(), 0.0))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(1.0)

    def _spawn(self) -> _Child:
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=child_main,
            args=(child_end, self._spec, self._trusted),
            name="conveyor-child",
            daemon=True,
        )
        # Block the stop signals while starting so a signal cannot reach the child before it
        # has set them to ignored (the blocked mask is inherited, and pending ones discarded).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child_end.close()
        child = _Child(process, parent_end)
        with self._lock:
            self._children.add(child)
        return child

    def _await_ready(self, child: _Child) -> str | None:
        """None once the child has imported the app; else why it could not."""
        try:
            if not child.conn.poll(_READY_TIMEOUT):
                child.process.kill()
                return f"no answer within {_READY_TIMEOUT:.0f} s"
            kind, detail = child.conn.recv()
        except (EOFError, OSError):
            return f"it exited with code {child.process.exitcode} while starting"
        return None if kind == "ready" else str(detail)

    def _adopt(self, child: _Child) -> None:
        threading.Thread(
            target=self._read, args=(child,), name="conveyor-child-reader", daemon=True
        ).start()
        self._idle.put(child)

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, attempt: Attempt) -> None:
        child = self._idle.get()  # a slot was free, so a child is free or being replaced
        with self._lock:
            stop = attempt.stop
            if stop is None:
                child.attempt = attempt
                attempt.handle = child
        if stop is not None:
            self._idle.put(child)
            self._done(attempt, Stopped(stop))
            return
        # If the child died just now, its reader reports the job and replaces the child.
        with contextlib.suppress(OSError):
            child.conn.send((attempt.delivery.payload, attempt.delivery.deliveries))

    def interrupt(self, attempt: Attempt, why: str) -> None:
        with self._lock:
            if attempt.stop is not None:
                return
            attempt.stop = why
            child = attempt.handle
            if not isinstance(child, _Child) or child.attempt is not attempt:
                return
            child.killed = why
        child.process.kill()

    def _read(self, child: _Child) -> None:
        while True:
            try:
                kind, *rest = child.conn.recv()
            except (EOFError, OSError):
                break
            if kind == "progress" and child.attempt is not None:
                self._report(child.attempt, rest[0], rest[1])
            elif kind == "done":
                self._finished(child, rest[0])
        self._died(child)

    def _finished(self, child: _Child, result: Result) -> None:
        with self._lock:
            attempt, child.attempt = child.attempt, None
            if attempt is not None:
                attempt.handle = None
            alive = child.killed is None and not self._closing
        if alive:
            self._idle.put(child)
        if attempt is not None:
            self._done(attempt, result)

    def _died(self, child: _Child) -> None:
        child.process.join(5.0)
        with self._lock:
            attempt, child.attempt = child.attempt, None
            self._children.discard(child)
            closing = self._closing
        child.conn.close()
        if attempt is not None:
            self._done(attempt, self._death(attempt, child))
        if not closing:
            self._replace()

    def _death(self, attempt: Attempt, child: _Child) -> Result:
        why = child.killed
        if why == TIMEOUT:
            timeout = attempt.message.timeout if attempt.message else None
            return timed_out(synthetic(TimeoutError, ""), timeout, hard=True)
        if why in (CANCEL, SHUTDOWN):
            return Stopped(why)
        code = child.process.exitcode
        log.warning(
            "job %s (%s): its process died with exit code %s", attempt.job_id, attempt.name, code
        )
        return synthetic(
            ChildProcessError,
            f"the process running the job died (exit code {code}); it may have crashed "
            "the interpreter (a segfault, os._exit or the out-of-memory killer)",
        )

    def _replace(self) -> None:
        while not self._closing:
            child = self._spawn()
            error = self._await_ready(child)
            if error is None:
                self._backoff.reset()
                self._adopt(child)
                return
            with self._lock:
                self._children.discard(child)
            delay = self._backoff.next()
            log.error("cannot start a worker process (%s); retrying in %.1f s", error, delay)
            time.sleep(delay)
