"""The deliveries this worker holds, from fetch until the broker has their outcome.

A held delivery is, in turn:

* **buffered** — fetched and vetted, waiting for a run slot (at most ``prefetch`` of them,
  fewer for jobs that run long: see ``PREFETCH_WINDOW``, and one per slot until a run
  time is known);
* **active** — given a run slot and handed to a pool (at most ``capacity``);
* **completed** — its run ended; the finisher is writing its outcome.

All of them keep their lease (the keeper renews everything held). A run slot frees when the
run ends, not when its outcome is written, and the thread that ends a run starts the next
buffered delivery itself (``start``), so a freed slot is refilled from memory at once instead
of after a fetch round trip. The consumer is woken to fetch only when it is worth it: at
once when nothing is buffered, else when half the buffer has room, so a steady stream of
completions costs one fetch per batch, not one per job.

At most ``2 * (capacity + buffer)`` deliveries are held at once: as many outcomes may
await their write as deliveries may wait to run or run, so the fetch of a busy worker
does not wait for the finisher's call to return (a batch is written while the next one
runs), and a slow or unreachable broker makes the worker fetch less, never run more than
``capacity`` jobs or pile up results nobody has written.

Deliveries are tracked by the ``Attempt`` object itself, never by a broker-made key: an
adapter may hand out one token for a whole fetched batch (tokens are unique per job only),
and a worker that keyed its deliveries by token once counted a batch of 50 as one and ran
201 jobs at once with ``--pool async -c 50``. Each attempt holds its own ``slot`` flag.

A buffer is filled for the runs seen so far; when they turn long, its jobs would wait on
this worker behind them while another worker sits idle. So once the oldest buffered delivery
was fetched ``BUFFER_PATIENCE`` ago and still waits for a run slot, ``take_stale`` gives up
the buffer (the consumer hands it back to the broker for whichever worker is free; jobs a
rate limit let through stay) and nothing is buffered again until a run ends and sizes the
buffer anew.

Once ``halt()`` is called (the worker is stopping) no buffered delivery starts any more:
``take_running`` hands them back with whatever still runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from ._attempt import COMPLETED, RELEASED, RUNNING, Attempt

Start = Callable[[Attempt], None]

# The buffer holds what the run slots will ask for in about this many seconds (several fetch
# round trips), at most ``prefetch``: a full buffer for short jobs, none for jobs that run
# long compared with a fetch. A buffered job started while the broker is away runs into
# the outage too (its result cannot be written before its lease lapses, so it runs again),
# so the buffer is kept to what a fetch round trip actually needs.
PREFETCH_WINDOW = 0.02
_RUN_WEIGHT = 0.1  # weight of the latest run in the moving average of run times
# How long after its fetch a buffered delivery may still wait for a run slot before the
# buffer is handed back (the worker's loop looks at least once a second, so 1-2 s): fifty
# times the ~20 ms it is sized to wait (PREFETCH_WINDOW), so only runs that turned long
# meanwhile make it wait so long.
BUFFER_PATIENCE = 1.0


def _let_others_run() -> None:
    """Give up the GIL for a moment, once per fetch this thread wakes the consumer for.

    Job threads that end runs back to back keep the GIL among themselves: a thread woken
    from a wait gets it only when they all block (or after the interpreter's 5 ms switch
    interval). The consumer woken for a fetch at half a buffer's room so slept on until
    the buffer ran dry (~1 ms), and fetched it all, while the job threads then waited for
    that fetch (docs/architecture.md, "The consumer's wake-up"). ``time.sleep(0)`` lets the
    GIL go across a system call; ``os.sched_yield`` measured less."""
    time.sleep(0)


class Inflight:
    def __init__(self, capacity: int, prefetch: int = 0) -> None:
        self.capacity = capacity
        self.prefetch = prefetch  # the most ever buffered
        # Buffered now at most (PREFETCH_WINDOW of runs); one per slot until a run time is
        # known, so a fresh worker does not take a long job's full buffer from its peers.
        self._buffer = min(prefetch, capacity)
        self._batch = max(1, self._buffer // 2)  # room worth a fetch while jobs are buffered
        self._run_avg: float | None = None  # seconds, moving average of run times
        # Runs shorter than this on average get the full buffer (``_size``); half the
        # threshold, so that no rounding at the threshold itself decides it.
        self._full_below = capacity * PREFETCH_WINDOW / prefetch / 2 if prefetch else 0.0
        # Per-job methods take the lock itself (``with`` on a Condition is a Python call more).
        self._lock = lock = threading.Lock()
        self._cond = threading.Condition(lock)  # something finished (drain and stop wait)
        self._fetch = threading.Condition(lock)  # a fetch became worth it (the consumer)
        self._fetch_waits = False  # the consumer waits on _fetch: a completion may notify it
        self._attempts: set[Attempt] = set()  # by identity (Attempt has eq=False)
        self._ready: deque[Attempt] = deque()  # buffered, oldest first
        self._active = 0  # attempts holding a run slot
        self.processed = 0
        self._closed = False
        self._halted = False
        # Starts an attempt that got a slot on completion of another (set by the consumer;
        # called outside the lock, in the thread that completed the other one).
        self.start: Start | None = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._attempts)

    @property
    def active(self) -> int:
        return self._active

    def alone(self) -> bool:
        """Whether at most one delivery is held (the caller's own, say)."""
        return len(self._attempts) <= 1

    def long_runs(self, window: float) -> int | None:
        """None unless runs usually take less than ``window`` seconds (by the moving
        average) and one that began within the last ``window`` holds a slot; else how many
        runs holding a slot began before that. Another outcome is then likely within
        ``window``, and nothing more is once no more than those long ones hold slots: a
        long job among short ones must not make every outcome beside it wait for nothing."""
        avg = self._run_avg
        if not self._active or avg is None or avg >= window:
            return None
        since = time.monotonic() - window
        with self._lock:  # when the finisher decides to wait, not per job
            long = sum(1 for a in self._attempts if a.slot and 0 < a.began <= since)
            return long if long < self._active else None

    def hold(self, attempts: Iterable[Attempt]) -> None:
        """A fetch's deliveries: held (their leases renewed) from now on."""
        with self._lock:
            self._attempts.update(attempts)

    def admit(self, attempt: Attempt) -> bool:
        """A vetted attempt wants to run: True if it took a run slot (start it now), False
        if it waits in the buffer (a completing run starts it) or is no longer running."""
        return bool(self.admit_all([attempt]))

    def admit_all(self, attempts: Iterable[Attempt]) -> list[Attempt]:
        """``admit`` for a fetch's vetted attempts, in order, under one lock: those that
        took a run slot (start them now); the rest wait in the buffer or no longer run."""
        slotted = []
        with self._lock:
            held, ready = self._attempts, self._ready
            for attempt in attempts:
                if attempt.state != RUNNING or attempt not in held:
                    continue
                if self._active < self.capacity and not self._halted:
                    attempt.slot = True  # _slot's lines, inline here and in _fill (every job)
                    self._active += 1
                    slotted.append(attempt)
                else:
                    ready.append(attempt)
        return slotted

    def _room(self) -> int:
        """How many more deliveries may be fetched now."""
        unstarted = self.capacity + self._buffer - self._active - len(self._ready)
        return min(unstarted, 2 * (self.capacity + self._buffer) - len(self._attempts))

    def _worth_fetching(self) -> bool:
        room = self._room()
        return room >= self._batch or (room > 0 and not self._ready)

    def free(self) -> int:
        with self._cond:
            return self._room()

    def wait_free(self, timeout: float) -> int:
        """Block until a fetch is worth it (or ``wake()``, or the timeout); return how many
        deliveries may be fetched."""
        with self._cond:
            if not self._worth_fetching() and not self._closed:
                self._fetch_waits = True
                try:
                    self._fetch.wait(timeout)
                finally:
                    self._fetch_waits = False
            return self._room()

    def wait_change(self, timeout: float) -> None:
        """Block until something finishes (or ``wake()``, or the timeout)."""
        with self._cond:
            if not self._closed:
                self._cond.wait(timeout)

    def wait_empty(self, timeout: float) -> bool:
        """Block until nothing runs or awaits its write (buffered deliveries that will not
        start are left for ``take_running``); False if time (or patience) ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy() and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return not self._busy()

    def _busy(self) -> bool:
        return len(self._attempts) > (len(self._ready) if self._halted else 0)

    def halt(self) -> None:
        """The worker is stopping: start no buffered delivery any more."""
        with self._cond:
            self._halted = True
            self._cond.notify_all()
            self._fetch.notify_all()

    def wake(self, close: bool = False) -> None:
        """Wake every waiter; ``close=True`` also makes later waits return at once."""
        with self._cond:
            self._closed = self._closed or close
            self._cond.notify_all()
            self._fetch.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._halted = False

    def complete(self, attempt: Attempt, ran: float | None = None) -> bool:
        """The run ended (after ``ran`` seconds, if it ran); False if the job was handed
        back meanwhile (drop the result). Buffered deliveries that get the freed slot are
        started here."""
        with self._lock:
            if attempt.state != RUNNING:
                return False
            attempt.state = COMPLETED
            if attempt.slot:
                attempt.slot = False
                self._active -= 1
                if ran is not None and self.prefetch:
                    # _ran's average, inline (every run ends here); the buffer is sized
                    # again only when the average may have moved it off the full one.
                    avg = self._run_avg
                    avg = ran if avg is None else avg + (ran - avg) * _RUN_WEIGHT
                    self._run_avg = avg
                    if avg >= self._full_below or self._buffer != self.prefetch:
                        self._size(avg)
            starting = self._fill() if self._ready else None
            woke = self._fetch_waits and self._worth_fetching()
            if woke:
                self._fetch_waits = False  # woken: the next completion need not say it again
                self._fetch.notify()
        if starting:
            self._start(starting)
        if woke:
            _let_others_run()
        return True

    def _size(self, avg: float) -> None:
        """The buffer for runs of ``avg`` seconds on average."""
        wanted = self.capacity * PREFETCH_WINDOW / avg if avg > 0 else self.prefetch
        self._buffer = min(self.prefetch, int(wanted))
        self._batch = max(1, self._buffer // 2)

    def _unslot(self, attempt: Attempt) -> None:
        if attempt.slot:
            attempt.slot = False
            self._active -= 1

    def _fill(self) -> list[Attempt]:
        """Give free run slots to buffered deliveries, oldest first."""
        starting = []
        while self._ready and self._active < self.capacity and not self._halted:
            attempt = self._ready.popleft()
            attempt.slot = True
            self._active += 1
            starting.append(attempt)
        return starting

    def _start(self, attempts: list[Attempt]) -> None:
        start = self.start
        assert start is not None, "a consumer sets start before anything is buffered"
        for attempt in attempts:
            start(attempt)

    def _pop(self, attempt: Attempt) -> bool:
        if attempt not in self._attempts:
            return False
        self._attempts.remove(attempt)
        if attempt.slot:
            self._unslot(attempt)
        elif attempt.state == RUNNING:
            with contextlib.suppress(ValueError):  # not buffered
                self._ready.remove(attempt)
        return True

    def remove(self, attempts: Iterable[Attempt], processed: bool = True) -> None:
        """Outcomes written (or given up): the deliveries are no longer held."""
        with self._cond:
            for attempt in attempts:
                if self._pop(attempt) and processed:
                    self.processed += 1
            starting = self._fill()
            self._cond.notify_all()
            if self._fetch_waits and self._worth_fetching():
                self._fetch_waits = False  # woken: the next completion need not say it again
                self._fetch.notify()
        if starting:
            self._start(starting)

    def holding(self) -> list[Attempt]:
        """Deliveries whose lease still matters: buffered, running, or not yet written."""
        with self._cond:
            return [a for a in self._attempts if not a.lost]

    def take_running(self) -> list[Attempt]:
        """Mark every buffered or still-running attempt released and return them (for
        ``release``)."""
        with self._cond:
            taken = [a for a in self._attempts if a.state == RUNNING]
            for a in taken:
                a.state = RELEASED
                a.slot = False
            self._active = 0
            self._ready.clear()
            return taken

    def take_stale(self, patience: float) -> list[Attempt]:
        """The buffered deliveries, marked released, once the oldest was fetched
        ``patience`` seconds ago and still waits for a run slot (for ``release``), else
        none. A job of a rate-limited task stays (and is not the one whose wait counts):
        it spent its limit's budget when it was let through, and would spend it again
        wherever it went. The buffer stays empty until a run ends (``complete`` sizes it
        again): a slot that frees meanwhile fetches one job, and what runs long keeps no
        jobs from idle workers."""
        since = time.monotonic() - patience
        with self._lock:
            ready = self._ready
            if not ready or ready[0].started > since:
                return []
            taken: list[Attempt] = []
            kept: list[Attempt] = []
            for attempt in ready:
                limited = attempt.message is not None and attempt.message.rate is not None
                (kept if limited else taken).append(attempt)
            if not taken or taken[0].started > since:  # in fetch order: the oldest first
                return []
            ready.clear()
            ready.extend(kept)
            for attempt in taken:
                attempt.state = RELEASED
            self._buffer, self._batch = 0, 1
            return taken

    def drop(self, attempts: list[Attempt]) -> None:
        self.remove(attempts, processed=False)
