"""SIGTERM and SIGINT: the first stops the worker gracefully, the second at once.

Handlers can only be installed from the main thread; ``Worker.run`` then does the work in
another thread and waits for it here, so a handler never interrupts code holding the
worker's locks.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stop_signals(on_signal: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``on_signal(signum, count)`` for each stop signal while the block runs."""
    count = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        on_signal(signum, count)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
