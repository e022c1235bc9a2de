"""The stop-signal handler only records; the main thread acts on each signal outside it.

A handler runs between any two bytecodes of the main thread, also inside another handler:
one that stopped the worker itself (``Event.set``, a log line) could wait on a lock the
code it interrupted holds, and a second SIGTERM close behind the first hung the worker."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import pytest

from conveyor import Conveyor, JobStatus
from conveyor.worker import Worker
from conveyor.worker import _worker as worker_module
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


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_a_stop_ends_run_when_the_broker_stops_answering(
    signals: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fetch (or a hand-back, a goodbye) held up by a broker that does not answer held the
    stop up too: for the socket timeouts and retries of every call, 100 s and more, and a
    second signal changed nothing. ``run`` now returns ``SHUTDOWN_SPARE`` after the grace."""
    monkeypatch.setattr(worker_module, "SHUTDOWN_SPARE", 0.5)
    app = Conveyor("memory://")
    answering, release = threading.Event(), threading.Event()
    real = app.broker.fetch

    def fetch(*args: Any, **kwargs: Any) -> Any:
        if not answering.is_set():  # the first answers; then the server stops
            answering.set()
            return real(*args, **kwargs)
        release.wait(60)
        return []

    app.broker.fetch = fetch  # type: ignore[method-assign]
    worker = Worker(app, grace=0.5)

    def stop() -> None:
        answering.wait(30)
        time.sleep(0.2)  # in the fetch that does not answer
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)

    threading.Thread(target=stop, daemon=True).start()
    caplog.set_level(logging.INFO, "conveyor.worker")
    began = time.monotonic()
    try:
        worker.run()
        took = time.monotonic() - began
    finally:
        release.set()
    assert took < 0.2 + 0.5 + 0.5 + 5  # its grace and the spare, not the broker's timeouts
    assert "shutdown did not end 0.5 s after the stop's grace" in caplog.text


def test_a_second_signal_long_after_the_first_still_hands_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The spare was counted from the first signal with no grace: a second signal more than
    ``SHUTDOWN_SPARE`` after the first made ``run`` return at once, the running job not
    handed back (running until its lease lapsed)."""
    monkeypatch.setattr(worker_module, "SHUTDOWN_SPARE", 0.5)
    app = Conveyor("memory://")
    started, release = threading.Event(), threading.Event()

    @app.task
    def long() -> None:
        started.set()
        while not release.is_set():
            time.sleep(0.01)

    job = long.delay()
    worker = Worker(app, grace=30)

    def signals() -> None:
        started.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)  # twice the spare
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signals, daemon=True).start()
    caplog.set_level(logging.INFO, "conveyor.worker")
    try:
        worker.run()
    finally:
        release.set()
    assert job.status is JobStatus.QUEUED  # handed back for another worker
    assert "did not end" not in caplog.text
