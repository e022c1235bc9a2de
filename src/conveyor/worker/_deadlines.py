"""The time-limit watchdog: one thread, one heap of deadlines on the app's clock.

It sleeps until the nearest deadline, but never more than ``_WAKE`` at a time, because the
clock may be injected (a test's fake clock moves without waking anyone).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

from .._clock import Clock
from ._attempt import RUNNING, TIMEOUT, Attempt

_WAKE = 0.25
_PRUNE_MIN = 1024


class Deadlines:
    def __init__(self, clock: Clock, interrupt: Callable[[Attempt, str], None]) -> None:
        self._clock = clock
        self._interrupt = interrupt
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Attempt]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._prune_at = _PRUNE_MIN
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="conveyor-deadlines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)

    def add(self, attempt: Attempt, seconds: float) -> None:
        with self._cond:
            if len(self._heap) >= self._prune_at:
                # Finished jobs stay in the heap until their deadline; with long limits and
                # many short jobs that adds up, so drop them now and then (amortised O(1)).
                self._heap = [e for e in self._heap if e[2].state == RUNNING]
                heapq.heapify(self._heap)
                self._prune_at = max(_PRUNE_MIN, 2 * len(self._heap))
            heapq.heappush(self._heap, (self._clock.time() + seconds, next(self._seq), attempt))
            self._cond.notify_all()

    def _due(self) -> list[Attempt]:
        """Wait for deadlines to pass; return the attempts past theirs (empty when stopping)."""
        with self._cond:
            while not self._stopping:
                now = self._clock.time()
                due: list[Attempt] = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if due:
                    return due
                left = self._heap[0][0] - now if self._heap else None
                self._cond.wait(None if left is None else min(left, _WAKE))
            return []

    def _run(self) -> None:
        while due := self._due():
            for attempt in due:
                if attempt.state == RUNNING:
                    self._interrupt(attempt, TIMEOUT)
