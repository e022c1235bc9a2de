"""The deliveries this worker holds, from fetch until the broker has their outcome.

A run slot is taken at fetch and given back when the run ends, so the next job can be
fetched while the finisher is still writing this one's outcome (otherwise every slot sits
idle for a finish round trip plus a fetch round trip per job). A delivery stays *held* (its
lease renewed) until the finish (or release) is recorded, and at most ``2 * capacity`` are
held at once: a slow or unreachable broker makes the worker fetch less, never run more than
``concurrency`` jobs or pile up results nobody has written.

Deliveries are tracked by the ``Attempt`` object itself, never by a broker-made key: an
adapter may hand out one token for a whole fetched batch (tokens are unique per job only),
and a worker that keyed its deliveries by token once counted a batch of 50 as one and ran
201 jobs at once with ``--pool async -c 50``. Each attempt takes its run slot when added
and gives it back on its own move out of ``running``, whatever other attempts look like.
"""

from __future__ import annotations

import threading
import time

from ._attempt import COMPLETED, RELEASED, RUNNING, Attempt


class Inflight:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cond = threading.Condition()
        self._attempts: set[Attempt] = set()  # by identity (Attempt has eq=False)
        self._running = 0  # attempts in state RUNNING (each takes a run slot)
        self.processed = 0
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._attempts)

    def add(self, attempt: Attempt) -> None:
        with self._cond:
            if attempt in self._attempts:
                return
            self._attempts.add(attempt)
            if attempt.state == RUNNING:
                self._running += 1

    def _free(self) -> int:
        return min(self.capacity - self._running, 2 * self.capacity - len(self._attempts))

    def free(self) -> int:
        with self._cond:
            return self._free()

    def wait_free(self, timeout: float) -> int:
        """Block until a slot is free (or ``wake()``, or the timeout); return free slots."""
        with self._cond:
            if self._free() <= 0 and not self._closed:
                self._cond.wait(timeout)
            return self._free()

    def wait_change(self, timeout: float) -> None:
        """Block until something finishes (or ``wake()``, or the timeout)."""
        with self._cond:
            if not self._closed:
                self._cond.wait(timeout)

    def wait_empty(self, timeout: float) -> bool:
        """Block until every delivery is finished; False if time (or patience) ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._attempts and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return not self._attempts

    def wake(self, close: bool = False) -> None:
        """Wake every waiter; ``close=True`` also makes later waits return at once."""
        with self._cond:
            self._closed = self._closed or close
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    def complete(self, attempt: Attempt) -> bool:
        """The run ended; False if the job was handed back meanwhile (drop the result)."""
        with self._cond:
            if attempt.state != RUNNING:
                return False
            attempt.state = COMPLETED
            if attempt in self._attempts:
                self._running -= 1
                self._cond.notify_all()  # a run slot is free: fetch the next job now
            return True

    def _pop(self, attempt: Attempt) -> bool:
        if attempt not in self._attempts:
            return False
        self._attempts.remove(attempt)
        if attempt.state == RUNNING:
            self._running -= 1
        return True

    def remove(self, attempt: Attempt, processed: bool = True) -> None:
        with self._cond:
            if self._pop(attempt) and processed:
                self.processed += 1
            self._cond.notify_all()

    def holding(self) -> list[Attempt]:
        """Deliveries whose lease still matters: running, or completed but not yet written."""
        with self._cond:
            return [a for a in self._attempts if not a.lost]

    def take_running(self) -> list[Attempt]:
        """Mark every still-running attempt released and return them (for ``release``)."""
        with self._cond:
            taken = [a for a in self._attempts if a.state == RUNNING]
            for a in taken:
                a.state = RELEASED
            self._running -= len(taken)
            return taken

    def drop(self, attempts: list[Attempt]) -> None:
        with self._cond:
            for a in attempts:
                self._pop(a)
            self._cond.notify_all()
