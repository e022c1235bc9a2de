"""SIGTERM and SIGINT: the first stops the worker gracefully, the second at once.

Handlers can only be installed from the main thread; ``Worker.run`` then does the work in
another thread and waits for it there. The handler itself only records the signal, and the
main thread acts on it between two short waits: a handler runs between any two bytecodes of
the main thread, also inside another handler (two signals close together), so one that
took a lock (``Event.set``, a log handler's) could wait on the very lock it interrupted, and
the worker would hang for good.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SIGNAL_LAG = 0.05  # seconds between a signal and the worker acting on it, at most


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Received:
    """The stop signals that came, in order; the handler appends, ``pending`` hands them out."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.handled = 0

    def pending(self) -> Iterator[tuple[int, int]]:
        """``(signum, count)`` for each signal not handed out yet; count 1 is the first."""
        while self.handled < len(self.signals):
            self.handled += 1
            yield self.signals[self.handled - 1], self.handled


@contextmanager
def stop_signals() -> Iterator[Received]:
    """Record each stop signal while the block runs (``list.append`` takes no lock)."""
    received = Received()

    def handler(signum: int, frame: FrameType | None) -> None:
        received.signals.append(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def wait_for(
    thread: threading.Thread,
    received: Received,
    on_signal: Callable[[int, int], None],
    give_up: Callable[[], bool] = lambda: False,
) -> None:
    """Join ``thread`` from the main thread, calling ``on_signal(signum, count)`` for each
    stop signal outside the handler, within ``SIGNAL_LAG`` seconds of its coming; or return
    while it still runs, once ``give_up()`` says so (asked as often)."""
    while thread.is_alive():
        thread.join(SIGNAL_LAG)
        for signum, count in received.pending():
            on_signal(signum, count)
        if give_up():
            return
