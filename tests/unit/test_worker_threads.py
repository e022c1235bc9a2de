"""The thread pool (``worker/_threads.py``): ``size`` jobs run at once, a queued job never
waits behind a running one, including a job a completing run submits from its own thread
(as ``Inflight.start`` does), and the pool never grows past ``size`` threads however many
threads submit at once; a Ctrl-C in a job run on the main thread leaves its attempt free."""

from __future__ import annotations

import dis
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor._message import Delivery, Message
from conveyor.brokers.memory import MemoryBroker
from conveyor.worker import _threads
from conveyor.worker._attempt import CANCEL, TIMEOUT, Attempt, Result, Results, Returned
from conveyor.worker._threads import ThreadRunner, run_here

WAIT = 10.0  # seconds: a bound that only a broken pool reaches


def _attempt(fn: Callable[..., Any], n: int = 0) -> Attempt:
    attempt = Attempt(Delivery(f"j{n}", "default", b"", "tok", 1))
    attempt.message = Message(id=f"j{n}", task="t")
    attempt.fn = fn
    return attempt


class Pool:
    """A ``ThreadRunner`` whose ``done`` records the results and may submit more."""

    def __init__(self, size: int) -> None:
        results = Results(Conveyor(broker=MemoryBroker()).codec, 1 << 20)
        self.lock = threading.Lock()
        self.done: list[Result] = []
        self.idents: set[int] = set()  # the threads that ran jobs
        self.all_done = threading.Event()
        self.expected = 0
        self.then: Callable[[Attempt], None] | None = None  # called in done, like Inflight.start
        self.runner = ThreadRunner(size, results, self._done, lambda *a: None)
        self.runner.start()

    def _done(self, attempt: Attempt, result: Result) -> None:
        if self.then is not None:
            self.then(attempt)
        with self.lock:
            self.done.append(result)
            self.idents.add(threading.get_ident())
            if len(self.done) >= self.expected:
                self.all_done.set()

    def threads(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.ident in self.idents]


def test_a_job_queued_beside_a_blocked_one_runs_at_once() -> None:
    pool = Pool(2)
    release = threading.Event()
    ran = threading.Event()
    pool.expected = 2
    pool.runner.submit(_attempt(lambda: release.wait(WAIT), 1))
    pool.runner.submit(_attempt(ran.set, 2))
    try:
        assert ran.wait(WAIT), "the second job waited behind the blocked one"
    finally:
        release.set()
        assert pool.all_done.wait(WAIT)
        pool.runner.shutdown()


def test_a_job_started_by_a_completing_run_does_not_wait_behind_a_long_one() -> None:
    # One thread runs a long job; another ends a short run and, in its done callback (as
    # Inflight.start does), submits two more: it takes one itself, the other wakes a thread.
    pool = Pool(3)
    release = threading.Event()
    ran = [threading.Event(), threading.Event()]
    both = threading.Barrier(2, timeout=WAIT)  # the two must run at once: one thread each
    pool.expected = 4

    def chain(attempt: Attempt) -> None:
        if attempt.job_id == "j2":
            pool.then = None
            for i in (0, 1):
                pool.runner.submit(_attempt(lambda i=i: (both.wait(), ran[i].set()), 3 + i))

    pool.then = chain
    pool.runner.submit(_attempt(lambda: release.wait(WAIT), 1))
    pool.runner.submit(_attempt(lambda: None, 2))
    try:
        assert ran[0].wait(WAIT) and ran[1].wait(WAIT)
    finally:
        release.set()
        assert pool.all_done.wait(WAIT)
        pool.runner.shutdown()


def test_size_jobs_run_at_once() -> None:
    size = 6
    pool = Pool(size)
    everyone = threading.Barrier(size, timeout=WAIT)  # broken unless all six run at once
    pool.expected = 2 * size
    for n in range(2 * size):
        pool.runner.submit(_attempt(everyone.wait, n))
    assert pool.all_done.wait(WAIT)
    assert all(isinstance(r, Returned) for r in pool.done), pool.done
    assert len(pool.idents) == size
    pool.runner.shutdown()


def test_a_burst_of_tiny_jobs_is_run_including_those_a_completing_run_starts() -> None:
    # Regression: the consumer and job threads growing the pool at once started 6 threads
    # for a pool of 4.
    pool = Pool(4)
    total = 3000
    count = iter(range(total // 2, total))

    def chain(attempt: Attempt) -> None:  # every run started from outside starts another
        if int(attempt.job_id[1:]) < total // 2:
            pool.runner.submit(_attempt(lambda: None, next(count)))

    pool.then = chain
    pool.expected = total
    for n in range(total // 2):
        pool.runner.submit(_attempt(lambda: None, n))
    assert pool.all_done.wait(WAIT)
    time.sleep(0.05)
    assert len(pool.done) == total
    assert len(pool.idents) <= 4
    pool.runner.shutdown()


def test_shutdown_ends_the_sleeping_threads() -> None:
    pool = Pool(3)
    pool.expected = 3
    for n in range(3):
        pool.runner.submit(_attempt(lambda: time.sleep(0.01), n))
    assert pool.all_done.wait(WAIT)
    started = pool.threads()
    assert started
    pool.runner.shutdown()
    for t in started:
        t.join(WAIT)
        assert not t.is_alive()


def _first_start_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next thread started fails to start, as with "can't start new thread"."""
    start = threading.Thread.start
    failed: list[bool] = []

    def fails_once(self: threading.Thread) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", fails_once)


def test_a_thread_that_fails_to_start_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: the pool counted a thread before starting it, and kept counting it when
    # start raised (can't start new thread): a pool of 1 was then "full" with no thread,
    # and every later job waited in its queue for ever (held, its lease renewed).
    pool = Pool(1)
    _first_start_fails(monkeypatch)
    ran = threading.Event()
    with pytest.raises(RuntimeError, match="can't start"):
        pool.runner.submit(_attempt(lambda: None, 1))
    pool.runner.submit(_attempt(ran.set, 2))
    try:
        assert ran.wait(WAIT), "no thread was started after one failed to start"
    finally:
        pool.runner.shutdown()


def test_a_job_whose_submit_failed_is_not_run_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # submit raising makes the consumer let the job go (_let_go: its lease lapses, another
    # worker runs it); it was queued before the thread was started, and ran here too.
    pool = Pool(1)
    _first_start_fails(monkeypatch)
    let_go, ran = threading.Event(), threading.Event()
    with pytest.raises(RuntimeError, match="can't start"):
        pool.runner.submit(_attempt(let_go.set, 1))
    pool.runner.submit(_attempt(ran.set, 2))
    try:
        assert ran.wait(WAIT)
        assert not let_go.is_set(), "the job let go after its submit failed ran anyway"
    finally:
        pool.runner.shutdown()


def test_a_job_whose_thread_failed_to_start_runs_on_a_started_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = Pool(2)
    pool.expected = 2
    pool.runner.submit(_attempt(lambda: None, 1))  # starts the first thread
    start = threading.Thread.start

    def fails(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", fails)
    ran = threading.Event()
    pool.runner.submit(_attempt(ran.set, 2))  # no second thread: queued for the first
    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        assert ran.wait(WAIT)
    finally:
        pool.runner.shutdown()


class CtrlC:
    """A trace function that raises ``KeyboardInterrupt`` in ``_threads._execute`` right
    after the ``n``-th call made in its frame returns: where the interpreter checks for a
    signal, so where a Ctrl-C can land when ``app.drain()`` runs a job on the main thread
    (``run_here``)."""

    _CALLS = ("CALL", "CALL_FUNCTION_EX")

    def __init__(self, n: int) -> None:
        self.n = n
        self.raised = False
        self._seen = 0
        self._code = _threads._execute.__code__
        self._ops = {i.offset: i.opname for i in dis.get_instructions(self._code)}
        self._last = -1

    def __call__(self, frame: FrameType, event: str, arg: object) -> Any:
        if event != "call" or frame.f_code is not self._code:
            return None
        frame.f_trace_opcodes = True
        self._last = -1
        return self._step

    def _step(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            if not self.raised and self._ops.get(self._last) in self._CALLS:
                if self._seen == self.n:
                    self.raised = True
                    raise KeyboardInterrupt
                self._seen += 1
            self._last = frame.f_lasti
        return self._step


class _Unstick(BaseException):
    pass


def _unstick_eval_breaker() -> None:
    """CPython 3.11: a thread clearing its pending async exception (a stopped job's, in
    ``_execute``) leaves the interpreter's eval breaker set, and a traced call then spins
    for ever; raising and catching one here resets it."""
    try:
        _threads._set_async_exc(threading.get_ident(), _Unstick)
        for _ in range(10):
            pass
    except _Unstick:
        pass


def test_a_ctrl_c_in_a_job_on_the_main_thread_leaves_its_attempt_free() -> None:
    # Regression: the first lock was a bare acquire and release, and a KeyboardInterrupt
    # landing between them left the attempt's lock held for ever: a time limit firing
    # after it blocked the watchdog thread (every job's time limits) on that lock. One
    # landing right after the lock was released, before the run's try, left the thread
    # aimed at: a later cancel or time limit raised into the drain's own code.
    assert threading.current_thread() is threading.main_thread()  # where a Ctrl-C lands
    results = Results(Conveyor(broker=MemoryBroker()).codec, 1 << 20)
    _unstick_eval_breaker()
    before = sys.gettrace()
    n = 0
    while True:  # each point in turn, until a run passes them all
        attempt = _attempt(lambda: 7, n)
        ended: list[Result] = []
        ctrl_c = CtrlC(n)
        sys.settrace(ctrl_c)
        try:
            run_here(attempt, results, lambda a, r, ended=ended: ended.append(r), lambda *a: None)
        finally:
            sys.settrace(before)
        if not ctrl_c.raised:
            assert ended == [b'{"value":7}']
            break
        assert len(ended) == 1 and not isinstance(ended[0], bytes), "it ended as a success"
        assert not attempt.lock.locked(), f"a Ctrl-C after call {n} left the lock held"
        assert attempt.handle is None, f"a Ctrl-C after call {n} left the thread aimed at"
        n += 1
    assert n >= 4  # the points tried: the lock's calls, the run's, the clear's


@pytest.mark.parametrize("stop", [CANCEL, TIMEOUT])
def test_a_job_stopped_before_it_ran_clears_nothing_aimed_at_its_thread(
    monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    # Nothing was aimed at the thread (``handle`` was never set), so nothing is cleared:
    # on CPython 3.11 a clear leaves the eval breaker set, and the next traced call in the
    # process (a debugger, a coverage tool) spun for ever after a job cancelled or past its
    # deadline while it waited for a thread.
    cleared: list[tuple[int, object]] = []
    monkeypatch.setattr(_threads, "_set_async_exc", lambda i, e: cleared.append((i, e)))
    results = Results(Conveyor(broker=MemoryBroker()).codec, 1 << 20)
    attempt = _attempt(lambda: 7)
    attempt.stop = stop
    ended: list[Result] = []
    worker = threading.Thread(
        target=run_here, args=(attempt, results, lambda a, r: ended.append(r), lambda *a: None)
    )
    worker.start()
    worker.join(5)
    assert len(ended) == 1 and not isinstance(ended[0], bytes)
    assert cleared == [] and attempt.handle is None and not attempt.lock.locked()


def test_a_child_forked_from_another_thread_knows_its_main_thread() -> None:
    # A child forked from a thread other than the main one runs on that thread, its main
    # thread now: a stale ``_MAIN`` took the bare lock there, and a Ctrl-C landing after
    # the acquire made the run's ``finally`` wait for that lock for ever.
    read, write = os.pipe()
    pids: list[int] = []

    def fork() -> None:
        pid = os.fork()
        if pid == 0:  # the child: one byte, then out at once
            os.write(write, b"1" if threading.get_ident() == _threads._MAIN else b"0")
            os._exit(0)
        pids.append(pid)

    forker = threading.Thread(target=fork)
    forker.start()
    forker.join(5)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pids[0], 0)


_TRACED_AFTER_A_STOP = """
import sys, threading, time
from conveyor import Conveyor
from conveyor._message import Delivery, Message
from conveyor.brokers.memory import MemoryBroker
from conveyor.worker._attempt import CANCEL, Attempt, Results
from conveyor.worker._threads import ThreadRunner, run_here

results = Results(Conveyor(broker=MemoryBroker()).codec, 1 << 20)
attempt = Attempt(Delivery("j", "default", b"", "tok", 1))
attempt.message = Message(id="j", task="t")
started = threading.Event()

def task():
    started.set()
    while True:
        time.sleep(0.001)

attempt.fn = task
ended = []
thread = threading.Thread(target=run_here, args=(attempt, results, lambda a, r: ended.append(r),
                                                  lambda *a: None))
thread.start()
started.wait()
ThreadRunner(1, results, lambda *a: None, lambda *a: None).interrupt(attempt, CANCEL)
thread.join()
assert ended, "no outcome"

def trace(frame, event, arg):
    return trace

sys.settrace(trace)
(lambda: 1)()
sys.settrace(None)
print("traced", ended[0])
"""


def test_a_traced_call_after_a_job_was_stopped_returns() -> None:
    # CPython 3.11: the thread's clear of what was aimed at it left the interpreter's
    # pending-exception signal set, and every traced call after (a debugger, a coverage
    # tool, in any thread) spun for ever. In a child process: a hang must not hang the tests.
    script = [sys.executable, "-c", _TRACED_AFTER_A_STOP]
    done = subprocess.run(script, check=False, capture_output=True, text=True, timeout=15)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "traced Stopped(why='cancel')"


def test_the_main_thread_aims_nothing_at_itself_after_a_clear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # There signal handlers run before a pending exception is raised: an exception it aimed
    # at itself (to reset 3.11's signal) was left pending by a Ctrl-C, to fire later in
    # other code, and a handler of the program's own was skipped.
    aimed: list[object] = []
    monkeypatch.setattr(_threads, "_set_async_exc", lambda i, e: aimed.append(e))
    assert threading.current_thread() is threading.main_thread()
    _threads._clear_pending(threading.get_ident())
    assert aimed == [None]
