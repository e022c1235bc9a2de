"""The stop-signal handler only records; the main thread acts on each signal outside it.

A handler runs between any two bytecodes of the main thread, also inside another handler:
one that stopped the worker itself (``Event.set``, a log line) could wait on a lock the
code it interrupted holds, and a second SIGTERM close behind the first hung the worker."""

from __future__ import annotations

import os
import signal
import threading
import time

from conveyor.worker._signals import stop_signals, wait_for


def test_signals_are_recorded_in_the_handler_and_handled_in_order_outside_it() -> None:
    calls: list[tuple[int, int]] = []
    with stop_signals() as received:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this thread, now
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert received.signals == [signal.SIGTERM, signal.SIGINT]
        assert calls == []  # nothing was done inside the handlers
        busy = threading.Thread(target=time.sleep, args=(0.3,))
        busy.start()
        wait_for(busy, received, lambda signum, count: calls.append((signum, count)))
    assert calls == [(signal.SIGTERM, 1), (signal.SIGINT, 2)]
    assert not busy.is_alive()


def test_a_signal_during_the_wait_is_handled_within_a_moment() -> None:
    seen: list[float] = []
    with stop_signals() as received:
        busy = threading.Thread(target=time.sleep, args=(4.0,))
        busy.start()
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        wait_for(busy, received, lambda signum, count: seen.append(time.monotonic() - started))
    assert len(seen) == 1 and 0.15 < seen[0] < 2.5, seen  # long before the thread's 4 s


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
