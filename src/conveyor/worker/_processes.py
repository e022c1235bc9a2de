"""Jobs in child processes: real parallelism for CPU-bound tasks, and hard time limits.

Each child is a fresh interpreter (``python -m conveyor.worker._child``: fork and exec at
once, never a bare ``fork`` of this threaded parent) that imports the app module itself and
never touches the broker. It runs one job at a time, sent over a socket pair; progress, log
records and the result come back over it. The parent kills a child to enforce a time limit,
cancel a job or stop at the end of the grace period, and starts a replacement.

Children are ``subprocess.Popen`` objects rather than ``multiprocessing.Process``: several
threads here wait for, poll and kill them, and ``subprocess`` serialises its ``waitpid``
calls, so a child reaped by one thread is never mistaken for a live one (and its pid never
signalled after reuse) by another.

Children do nothing on SIGINT and SIGTERM: Heroku and a terminal's Ctrl-C signal the whole
process group, and the parent decides what happens to the jobs (the processes their tasks
start get the default behaviour back). A child whose parent dies sees its socket close and
exits at once, abandoning its job to lease expiry like any crashed worker.

The parent learns that a child ended from the process, not only from its socket closing: a
process the child's task forked keeps every descriptor the child had, its end of the socket
too, and may outlive it by hours.

A child that dies by itself in the middle of a job (SIGKILL from the out-of-memory killer, a
segfault, ``os._exit``) is treated exactly like a worker that died: the job gets no outcome,
its lease is left to lapse (``abandon``), and its next delivery counts, so ``max_deliveries``
dead-letters a job that keeps killing its process, one lease apart (never a hot loop). A job
that merely raises follows its retry policy as everywhere else.

Recycling (Celery's ``worker_max_tasks_per_child`` / ``worker_max_memory_per_child``): after
``max_jobs`` jobs, or when its resident memory is above ``max_memory`` bytes after a job, a
child is told to exit once that job's result is handed on; its replacement is started and
has imported the app before it is given a job. Nothing is lost or run twice by recycling:
the child holds no job when it goes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .. import _logging
from .._backoff import Backoff
from .._errors import ConfigurationError
from ..middleware import WorkerProcess
from ._attempt import CANCEL, SHUTDOWN, TIMEOUT, Attempt, Result, Stopped, synthetic, timed_out
from ._describe import text_of
from ._joblog import log_job
from ._threads import Abandon, Done, Report

log = logging.getLogger("conveyor.worker")

_READY_TIMEOUT = 120.0  # importing a big app in a fresh interpreter can take a while
_WATCH = 0.5  # how often a wait for a child's message looks whether it ended, or the worker stops
_EXIT_GRACE = 2.0  # seconds a reader has, once its child ended, before its read is ended (_watch)
_HALTED = "the worker stops"
# How long a retired child may take to exit (atexit handlers, threads a task left running)
# before it is killed: it holds no job by then, and its replacement waits for its exit.
RETIRE_PATIENCE = 10.0
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MiB = 1024 * 1024


def resident_memory(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (Linux ``/proc``); None where unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def check_recycling(max_jobs: int | None, max_memory: int | None) -> None:
    """Raise ``ConfigurationError`` unless both limits are None or positive integers (MiB
    for ``max_memory``), and the memory of a child can be read here."""
    for name, value, unit in (
        ("max_jobs_per_child", max_jobs, "jobs"),
        ("max_child_memory", max_memory, "MiB"),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"{name} must be a positive whole number of {unit} (or None for no limit), "
                f"not {value!r}"
            )
    if max_memory is not None and resident_memory(os.getpid()) is None:
        raise ConfigurationError(
            "max_child_memory needs /proc/<pid>/statm to read a child's memory, which this "
            "system does not have; use max_jobs_per_child to recycle children instead"
        )


class _Child:
    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.closing = threading.Lock()  # held to close conn, and to shut it down (_watch)
        self.attempt: Attempt | None = None
        self.killed: str | None = None  # why the parent killed it
        self.gone = False  # it ended (its reader saw it): never given a job again
        self.jobs = 0  # jobs it has run to the end
        self.reader: threading.Thread | None = None


class ProcessRunner:
    def __init__(
        self,
        size: int,
        spec: str,
        trusted: frozenset[str],
        *,
        done: Done,
        report: Report,
        abandon: Abandon,
        backoff: Backoff,
        halted: Callable[[], bool],
        max_jobs: int | None = None,
        max_memory: int | None = None,
        worker: WorkerProcess | None = None,
    ) -> None:
        self._size = size
        self._worker = worker  # for the children's lifecycle hooks
        self._spec = spec
        self._trusted = trusted
        self._done = done
        self._report = report
        self._abandon = abandon
        self._max_jobs = max_jobs
        self._max_memory = max_memory  # bytes
        self._backoff = backoff
        self._halted = halted
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._closing = False
        starting = [self._spawn() for _ in range(self._size)]
        for i, child in enumerate(starting):
            error = self._await_ready(child, stoppable=True)
            if error is _HALTED:  # a stop while the app imports: no job will come
                self._drop(starting[i:])
                return
            if error is not None:
                self.shutdown()
                raise ConfigurationError(f"a worker process could not load {self._spec!r}: {error}")
            self._adopt(child)

    def _drop(self, children: list[_Child]) -> None:
        """Kill children that have not started; the adopted ones end with ``shutdown``."""
        for child in children:
            child.proc.kill()
        for child in children:
            child.proc.wait()
            child.conn.close()
        with self._lock:
            self._children.difference_update(children)

    def shutdown(self) -> None:
        with self._lock:
            self._closing = True
            children = list(self._children)
        for child in children:
            with contextlib.suppress(OSError):
                child.conn.send(None)  # finish up and exit
        deadline = time.monotonic() + 3.0
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            children = list(self._children)  # and any replacement started meanwhile
        for child in children:
            child.proc.kill()  # a no-op for a child already reaped
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(2.0)
        deadline = time.monotonic() + 2.0
        for child in children:  # what a child said last (its leftover threads) gets written
            if child.reader is not None:
                child.reader.join(max(deadline - time.monotonic(), 0.0))

    def _spawn(self) -> _Child:
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "conveyor.worker._child", str(theirs.fileno())]
        # Block the stop signals while starting, so one sent to the process group cannot
        # reach the child before its own handlers are set (the mask survives exec; a signal
        # pending then reaches those handlers).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            theirs.close()
        conn = Connection(ours.detach())
        with contextlib.suppress(OSError):  # if it died at once, _await_ready says so
            conn.send((list(sys.path), self._spec, self._trusted, _logging.levels(), self._worker))
        log.debug("started worker process %s", proc.pid)
        child = _Child(proc, conn)
        with self._lock:
            self._children.add(child)
        return child

    def _await_ready(self, child: _Child, *, stoppable: bool = False) -> str | None:
        """None once the child has imported the app; else why it could not (``_HALTED`` if
        ``stoppable`` and the worker stops meanwhile)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        try:
            while True:
                if not child.conn.poll(min(max(deadline - time.monotonic(), 0.0), _WATCH)):
                    if stoppable and self._halted():
                        return _HALTED
                    if time.monotonic() < deadline:
                        continue
                    child.proc.kill()
                    return f"no answer within {_READY_TIMEOUT:.0f} s"
                kind, detail = child.conn.recv()
                if kind != "log":  # lines the app's import wrote
                    return None if kind == "ready" else str(detail)
                _logging.replay(detail)
        except (EOFError, OSError):
            code = child.proc.wait()
            return f"it exited with code {code} while starting"

    def _adopt(self, child: _Child) -> None:
        child.reader = threading.Thread(
            target=self._read, args=(child,), name="conveyor-child-reader", daemon=True
        )
        child.reader.start()
        threading.Thread(
            target=self._watch, args=(child,), name="conveyor-child-watch", daemon=True
        ).start()
        self._idle.put(child)

    def _watch(self, child: _Child) -> None:
        """Once the child's process has ended, give its reader a moment to read what it
        sent. A reader still waiting then is in the middle of a message the child was
        killed in, and a process the child forked holds the socket, so no end of file
        comes: shutting the socket down ends that read (and so the job)."""
        child.proc.wait()
        reader = child.reader
        if reader is None:
            return
        reader.join(_EXIT_GRACE)
        with child.closing:
            if reader.is_alive() and not child.conn.closed:
                sock = socket.socket(fileno=child.conn.fileno())  # the same descriptor
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                finally:
                    sock.detach()  # conn keeps it, and closes it

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, attempt: Attempt) -> None:
        while True:
            child = self._take_idle()
            if child is None:
                return  # stopping, and no child came free: the shutdown hands the job back
            with self._lock:
                # A child that died while idle is still in the queue (its replacement is
                # coming): given the job, it would hold it with nobody to report it.
                if child.gone:
                    continue
                stop = attempt.stop
                if stop is None:
                    child.attempt = attempt
                    attempt.handle = child
            break
        if stop is not None:
            self._idle.put(child)
            self._done(attempt, _stopped(attempt, stop))
            return
        # If the child died just now, its reader reports the job and replaces the child.
        with contextlib.suppress(OSError):
            child.conn.send((attempt.delivery.payload, attempt.delivery.deliveries))

    def _take_idle(self) -> _Child | None:
        # A slot was free, so a child is free or being replaced; but if replacements keep
        # failing (a deploy broke the app's import) the worker must still be able to stop.
        while True:
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                if self._halted():
                    return None

    def interrupt(self, attempt: Attempt, why: str) -> None:
        with self._lock:
            if attempt.stop is not None:
                return
            attempt.stop = why
            child = attempt.handle
            if not isinstance(child, _Child) or child.attempt is not attempt:
                return
            child.killed = why
        child.proc.kill()

    def _read(self, child: _Child) -> None:
        while True:
            if not child.conn.poll(_WATCH) and not _ended(child):
                continue
            try:
                kind, *rest = child.conn.recv()
            except (EOFError, OSError):  # or BlockingIOError: it ended, all it sent was read
                break
            except BaseException as exc:  # read whole, so the next message is in step
                log.warning("worker process %s sent a message that cannot be read here "
                            "(a log record's extra= value?): %s", child.proc.pid,
                            text_of(exc))  # fmt: skip
                continue
            try:
                self._handle(child, kind, rest)
            except BaseException:  # the only reader of the child's results (and log
                # handlers, which are the app's code, replay its records here)
                log.exception("worker process %s: cannot handle its %r message",
                              child.proc.pid, kind)  # fmt: skip
        self._died(child)

    def _handle(self, child: _Child, kind: str, rest: list[Any]) -> None:
        if kind == "progress":
            attempt = child.attempt  # not a job before it, whose thread may still report
            if attempt is not None and attempt.job_id == rest[0]:
                self._report(attempt, rest[1], rest[2])
        elif kind == "done":
            self._finished(child, rest[0])
        elif kind == "log":
            _logging.replay(rest[0])

    def _finished(self, child: _Child, result: Result) -> None:
        child.jobs += 1
        retire = self._retirement(child)
        with self._lock:
            attempt, child.attempt = child.attempt, None
            if attempt is not None:
                attempt.handle = None
            alive = child.killed is None and not self._closing
        if alive and retire is None:
            self._idle.put(child)
        if attempt is not None:
            self._done(attempt, result)
        if alive and retire is not None:
            log.info("recycling worker process %s: %s", child.proc.pid, retire)
            with contextlib.suppress(OSError):  # it exits; _died starts the replacement
                child.conn.send(None)
            threading.Thread(
                target=self._see_out, args=(child,), name="conveyor-child-retire", daemon=True
            ).start()

    def _see_out(self, child: _Child) -> None:
        """Kill a retired child that does not exit in time (a thread its tasks started
        keeps the interpreter alive, say), so the pool does not shrink by one for ever."""
        try:
            child.proc.wait(RETIRE_PATIENCE)
        except subprocess.TimeoutExpired:
            log.warning(
                "worker process %s did not exit within %g s of being recycled; killing it",
                child.proc.pid,
                RETIRE_PATIENCE,
            )
            child.proc.kill()  # it holds no job; _died starts the replacement

    def _retirement(self, child: _Child) -> str | None:
        """Why ``child`` must be replaced now that a job ended (None: it goes on)."""
        if self._max_jobs is not None and child.jobs >= self._max_jobs:
            return f"it ran {child.jobs} jobs (max_jobs_per_child={self._max_jobs})"
        if self._max_memory is not None:
            rss = resident_memory(child.proc.pid)
            if rss is not None and rss > self._max_memory:
                why = (
                    f"its resident memory is {rss / MiB:.0f} MiB after a job "
                    f"(max_child_memory={self._max_memory // MiB} MiB)"
                )
                if child.jobs == 1:  # every job will pay for a fresh interpreter
                    why += "; that was its first job: if most jobs need this much, raise the limit"
                return why
        return None

    def _died(self, child: _Child) -> None:
        with self._lock:
            child.gone = True  # submit gives it no job from now on (one given is read below)
        try:
            child.proc.wait(5.0)
        except subprocess.TimeoutExpired:  # it closed its end but lingers: make sure
            child.proc.kill()
            child.proc.wait()
        log.debug("worker process %s ended (%s)", child.proc.pid, child.proc.returncode)
        with self._lock:
            attempt, child.attempt = child.attempt, None
            if attempt is not None:
                attempt.handle = None
            self._children.discard(child)
            replace = not self._closing and child.killed != SHUTDOWN
        with child.closing:
            child.conn.close()
        if attempt is not None:
            self._ended(attempt, child)
        if replace:
            self._replace()

    def _ended(self, attempt: Attempt, child: _Child) -> None:
        """The child running ``attempt`` is gone without a result."""
        why = child.killed
        if why in (TIMEOUT, CANCEL, SHUTDOWN):
            self._done(attempt, _stopped(attempt, why))
        else:
            log_job(
                logging.WARNING,
                attempt,
                "job %s (%s): its process died (%s) on delivery %d; as with a worker that "
                "dies, the job gets no outcome and returns when its lease expires",
                attempt.job_id,
                attempt.name,
                _describe_exit(child.proc.returncode),
                attempt.delivery.deliveries,
            )
            self._abandon(attempt)

    def _replace(self) -> None:
        while not self._closing:
            child = self._spawn()
            error = self._await_ready(child)
            with self._lock:
                closing = self._closing
                if error is not None or closing:
                    self._children.discard(child)
            if closing:  # the pool shut down while this child started
                child.proc.kill()
                child.proc.wait()
                return
            if error is None:
                self._backoff.reset()
                self._adopt(child)
                return
            delay = self._backoff.next()
            log.error("cannot start a worker process (%s); retrying in %.1f s", error, delay)
            time.sleep(delay)


def _ended(child: _Child) -> bool:
    """Whether ``child``'s process ended, though its end of the socket may still be open (a
    process its task forked holds it): if so, what it sent is read from now on without
    waiting for more, and a message it was killed in the middle of ends the reading (one
    the reader was already waiting in is ended by ``_watch``)."""
    if child.proc.poll() is None:
        return False
    os.set_blocking(child.conn.fileno(), False)
    return True


def _stopped(attempt: Attempt, why: str) -> Result:
    """How a job the worker stopped ends: a timeout fails it (its retries apply), as in a
    run; a cancel or a shutdown stops it."""
    if why == TIMEOUT:
        timeout = attempt.message.timeout if attempt.message else None
        return timed_out(synthetic(TimeoutError, ""), timeout, hard=True)
    return Stopped(why)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
