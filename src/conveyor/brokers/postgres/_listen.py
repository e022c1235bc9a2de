"""Wake-ups without polling: one ``LISTEN`` connection per broker, and the threads waiting
on it.

A thread of the broker holds a connection of its own (not from the pool) that listens on
the schema's channel (``_functions`` lists what is sent on it) and wakes the waiters the
notification concerns: blocked fetches of the queues named, ``wait``s on the jobs named,
blocked event readers. A waiter registers *before* its last look at the tables, and the
listener is listening before the first waiter registers, so a commit cannot slip between
the look and the sleep.

When the listening connection is lost (a server restart), every waiter is woken to look
again, and until it listens again waiters look at least every ``_FALLBACK`` seconds. A
notification is otherwise never lost while the connection lives, so nothing here polls
the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import psycopg

log = logging.getLogger("conveyor.postgres")

_FALLBACK = 0.5  # longest sleep while the listener is not listening
_START_WAIT = 5.0  # how long a first waiter waits for the listener to listen
_TICK = 1.0  # how often the listener looks whether it should stop
_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0)  # between reconnection attempts


class Waiter:
    """One waiting thread's wake-up."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Sleep until woken (True) or ``timeout`` seconds pass; shorter while the listener
        is not listening. Each wake-up is consumed."""
        if not self._listener.up:
            timeout = min(timeout, _FALLBACK)
        woken = self._event.wait(max(timeout, 0.0))
        self._event.clear()
        return woken


class Listener:
    """Listens on ``channel`` over connections from ``connect`` (started on first use)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[tuple[object, ...]]],
                 channel: str) -> None:  # fmt: skip
        self._connect = connect
        self._channel = channel
        self._mutex = threading.Lock()
        self._fetchers: dict[Waiter, frozenset[str]] = {}
        self._jobs: dict[str, set[Waiter]] = {}
        self._readers: set[Waiter] = set()
        self._listening = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @property
    def up(self) -> bool:
        return self._listening.is_set() and self._pid == os.getpid()

    # -- waiting ---------------------------------------------------------------------------

    @contextmanager
    def fetching(self, queues: Iterable[str]) -> Iterator[Waiter]:
        with self._registered() as waiter:
            with self._mutex:
                self._fetchers[waiter] = frozenset(queues)
            try:
                yield waiter
            finally:
                with self._mutex:
                    self._fetchers.pop(waiter, None)

    @contextmanager
    def waiting_for(self, job_id: str) -> Iterator[Waiter]:
        with self._registered() as waiter:
            with self._mutex:
                self._jobs.setdefault(job_id, set()).add(waiter)
            try:
                yield waiter
            finally:
                with self._mutex:
                    waiters = self._jobs.get(job_id, set())
                    waiters.discard(waiter)
                    if not waiters:
                        self._jobs.pop(job_id, None)

    @contextmanager
    def reading(self) -> Iterator[Waiter]:
        with self._registered() as waiter:
            with self._mutex:
                self._readers.add(waiter)
            try:
                yield waiter
            finally:
                with self._mutex:
                    self._readers.discard(waiter)

    @contextmanager
    def _registered(self) -> Iterator[Waiter]:
        self._start()
        yield Waiter(self)

    # -- the listening thread --------------------------------------------------------------

    def _start(self) -> None:
        with self._mutex:
            if self._pid != os.getpid():  # first use, or a forked child: a thread of its own
                self._pid = os.getpid()
                self._listening = threading.Event()
                self._closing = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, name=f"conveyor-listen-{self._channel}", daemon=True
                )
                self._thread.start()
        self._listening.wait(_START_WAIT)

    def _run(self) -> None:
        failures = 0
        listening, closing = self._listening, self._closing
        while not closing.is_set():
            try:
                conn = self._connect()
            except psycopg.Error as exc:
                failures = self._lost(exc, failures)
                continue
            try:
                conn.execute(f'LISTEN "{self._channel}"')
                listening.set()
                failures = 0
                self._wake_all()  # what was committed while nobody listened
                while not closing.is_set():
                    for note in conn.notifies(timeout=_TICK):
                        self._dispatch(note.payload)
            except psycopg.Error as exc:
                listening.clear()
                failures = self._lost(exc, failures)
            finally:
                listening.clear()
                conn.close()

    def _lost(self, exc: psycopg.Error, failures: int) -> int:
        if not self._closing.is_set():
            self._wake_all()
            if failures == 0:
                log.warning("not listening for wake-ups (%s); retrying", str(exc).strip())
            time.sleep(_BACKOFF[min(failures, len(_BACKOFF) - 1)])
        return failures + 1

    def _dispatch(self, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        items = rest.split(",")
        with self._mutex:
            if kind == "q":
                named = set(items)
                woken = [w for w, qs in self._fetchers.items() if "*" in named or qs & named]
            elif kind == "d":
                if "*" in items:
                    woken = [w for ws in self._jobs.values() for w in ws]
                else:
                    woken = [w for i in items for w in self._jobs.get(i, ())]
            elif kind == "e":
                woken = list(self._readers)
            else:
                woken = []
        for waiter in woken:
            waiter.wake()

    def _wake_all(self) -> None:
        with self._mutex:
            woken = [
                *self._fetchers,
                *self._readers,
                *(w for ws in self._jobs.values() for w in ws),
            ]
        for waiter in woken:
            waiter.wake()

    def close(self) -> None:
        """Stop listening (the thread ends within ``_TICK``; nothing waits for it)."""
        self._closing.set()
        self._wake_all()
