"""Distributed locks on the key-value port: ``app.lock(name, ttl=...)``.

Each grant stores a random holder token under the lock's name with a TTL, and comes with a
fencing token that grows on every grant of that name. Release and extend are compare-and-
delete / compare-and-expire on the token, so a holder whose TTL ran out can never remove or
prolong the next holder's lock; it is told instead (``LockLost``).

What a lock promises, and what it does not, is written in ``docs/primitives.md``: exclusion
holds only while the holder finishes within its TTL (renewals included), on one broker that
does not lose writes. Pass ``lk.fence`` to the protected resource and have it refuse a fence
lower than one it has seen: that is what keeps a paused, stale holder from doing harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from ._backoff import RANDOM
from ._errors import ConfigurationError, LockError, LockLost, LockTimeout
from .stores._port import KeyValue, check_key
from .stores._store import MAX_TTL

__all__ = ["Lock", "backoff"]

log = logging.getLogger("conveyor.locks")

# Below this many seconds of validity a holder no longer claims the lock (and the broker
# could not express the TTL anyway: Redis counts in whole milliseconds).
_MIN_VALIDITY = 0.001
# Sentinel for "use the timeout the Lock was made with" (None already means "forever").
_LOCK_TIMEOUT: Any = object()


def backoff(first: float = 0.002, cap: float = 0.25) -> Iterator[float]:
    """Capped exponential delays with jitter: never below half the current step (no busy
    spin), never in lock-step with other waiters."""
    delay = first
    while True:
        yield RANDOM.uniform(delay / 2, delay)
        delay = min(cap, delay * 2)


def _check_ttl(name: str, ttl: object) -> float:
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not _MIN_VALIDITY <= ttl <= MAX_TTL
    ):
        raise ConfigurationError(
            f"lock {name!r} needs a ttl of {_MIN_VALIDITY} s to {MAX_TTL} s (ten years), got "
            f"{ttl!r}: without one, or with a longer one, a crashed holder's lock would stay "
            "held for good. Pick a ttl longer than the work, or a short one with auto_renew=True"
        )
    return float(ttl)


def _check_timeout(name: str, timeout: object) -> float | None:
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or math.isnan(timeout)
        or timeout < 0
    ):
        raise ConfigurationError(
            f"lock {name!r}: timeout must be None (wait forever), 0 (try once) or a positive "
            f"number of seconds, got {timeout!r}"
        )
    return float(timeout)


class Lock:
    """A lock held by at most one holder at a time, for at most ``ttl`` seconds per grant.

    Use it as ``with app.lock(...) as lk:`` or ``async with app.lock(...) as lk:``, or call
    ``acquire()`` / ``release()``. ``lk.fence`` is the grant's fencing token and ``lk.token``
    the holder's random token. Not reentrant, and one ``Lock`` object belongs to one thread
    (or task) at a time: make one per holder.
    """

    def __init__(
        self,
        kv: KeyValue,
        name: str,
        ttl: float,
        *,
        timeout: float | None = None,
        auto_renew: bool = False,
    ) -> None:
        self.name = check_key(name)
        self.ttl = _check_ttl(name, ttl)
        self.timeout = _check_timeout(name, timeout)
        if not isinstance(auto_renew, bool):
            raise ConfigurationError(
                f"lock {name!r}: auto_renew takes True or False, got {auto_renew!r}"
            )
        self.auto_renew = auto_renew
        self._hold_ttl = self.ttl  # what renewals reset the time left to: extend(ttl) sets it
        self.token = secrets.token_hex(16)
        self._kv = kv
        self._fence: int | None = None
        self._held = False
        self._lost: str | None = None  # why this holder knows it lost the lock
        self._valid_until = 0.0  # time.monotonic() by which our own TTL has surely run out
        self._forked_from: int | None = None
        self._renewal: weakref.finalize[[], Lock] | None = None  # call: stop the renewer
        # Serialises this holder's own broker calls, so a renewal and an owned() check
        # never interleave and leave ``_valid_until`` claiming more than the broker has.
        self._mutex = threading.Lock()
        _LIVE.add(self)

    def __repr__(self) -> str:
        state = f"held fence={self._fence}" if self._held else "not held"
        return f"<Lock {self.name!r} ttl={self.ttl:g} {state}>"

    @property
    def fence(self) -> int:
        """The fencing token of the current (or last) grant: larger for every later grant."""
        if self._fence is None:
            raise LockError(
                f"lock {self.name!r} has not been acquired yet, so it has no fencing token; "
                "read lk.fence inside `with app.lock(...) as lk:` or after lk.acquire()"
            )
        return self._fence

    # -- acquiring -------------------------------------------------------------------------

    def acquire(self, timeout: float | None = _LOCK_TIMEOUT) -> int:
        """Wait until the lock is ours and return its fencing token.

        ``timeout`` (default: the one the lock was made with) bounds the wait: None waits
        for as long as it takes, 0 tries once. Raises ``LockTimeout`` when it runs out.
        """
        deadline = self._start_waiting(timeout)
        for delay in backoff():
            if self._try_acquire():
                return self.fence
            time.sleep(self._pause(delay, deadline))
        raise AssertionError("unreachable")  # pragma: no cover

    async def acquire_async(self, timeout: float | None = _LOCK_TIMEOUT) -> int:
        """``acquire`` for asyncio: waits on the event loop, talks to the broker off it."""
        deadline = self._start_waiting(timeout)
        for delay in backoff():
            if await self._try_acquire_async():
                return self.fence
            await asyncio.sleep(self._pause(delay, deadline))
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_waiting(self, timeout: float | None) -> tuple[float, float] | None:
        """(timeout, monotonic deadline) for this wait, or None to wait forever."""
        wait = self.timeout if timeout is _LOCK_TIMEOUT else _check_timeout(self.name, timeout)
        self._new_holder()
        return None if wait is None else (wait, time.monotonic() + wait)

    def _pause(self, delay: float, deadline: tuple[float, float] | None) -> float:
        """How long to sleep before the next attempt; ``LockTimeout`` once time is up."""
        if deadline is None:
            return delay
        wait, until = deadline
        left = until - time.monotonic()
        if left <= 0:
            raise LockTimeout(
                f"could not acquire lock {self.name!r} within {wait:g}s: another holder has "
                "it. Wait longer (timeout=, or None to wait until it is free), or retry later; "
                "a crashed holder's lock frees itself when its ttl runs out"
            )
        return min(delay, left)

    def _new_holder(self) -> None:
        with self._mutex:
            if self._held:
                raise LockError(
                    f"lock {self.name!r} is already held by this Lock object; locks are not "
                    "reentrant: release it first, or make a separate app.lock(...) per holder"
                )
            if self._fence is not None:
                # A Lock used again is a new holder: a fresh token, so nothing the previous
                # grant's token still matches (a late release, a renewal) can touch this one.
                self.token = secrets.token_hex(16)

    def _try_acquire(self) -> bool:
        """One attempt; True if the lock is now ours (and its renewer started)."""
        with self._mutex:
            started = time.monotonic()
            fence = self._kv.lock_acquire(self.name, self.token, self.ttl)
            if fence is None:
                return False
            self._fence = fence
            self._held = True
            self._lost = None
            self._forked_from = None
            # Measured from before the request: the broker's TTL started later, never earlier.
            self._valid_until = started + self.ttl
            self._hold_ttl = self.ttl
            if self.auto_renew:
                self._start_renewal()
        return True

    async def _try_acquire_async(self) -> bool:
        # The attempt runs in a thread, which cancellation cannot stop. If the awaiting task
        # is cancelled, whichever side finishes last hands back a grant nobody will use,
        # rather than leave it blocking everyone until its TTL runs out.
        guard = threading.Lock()
        state = {"done": False, "got": False, "abandoned": False}

        def attempt() -> bool:
            got = self._try_acquire()
            with guard:
                state.update(done=True, got=got)
                orphaned = got and state["abandoned"]
            if orphaned:
                self._release_quietly()
            return got

        future = asyncio.ensure_future(asyncio.to_thread(attempt))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with guard:
                state["abandoned"] = True
                orphaned = state["done"] and state["got"]
            if orphaned:
                await asyncio.shield(asyncio.to_thread(self._release_quietly))
            raise

    # -- holding ---------------------------------------------------------------------------

    def release(self) -> None:
        """Give the lock up. Raises ``LockLost`` if it was no longer ours: the TTL ran out
        (or a renewal failed) and another holder may have had it meanwhile."""
        self._stop_renewal()
        with self._mutex:
            self._check_held("release")
            self._held = False
            reason = self._lost
            # The broker's answer is the truth: True means our token was there all along,
            # so nobody else can have held the lock in between.
            if self._kv.lock_release(self.name, self.token):
                return
        raise LockLost(self._lost_message(reason or "its ttl ran out before release"))

    def extend(self, ttl: float | None = None) -> None:
        """Reset the time left to ``ttl`` seconds (default: the lock's ttl), if still ours;
        raises ``LockLost`` otherwise. With ``auto_renew``, the renewals keep that ttl from
        then on (every ``ttl / 3``)."""
        new_ttl = self.ttl if ttl is None else _check_ttl(self.name, ttl)
        with self._mutex:
            self._check_held("extend")
            if self._lost is None:
                started = time.monotonic()
                if self._kv.lock_extend(self.name, self.token, new_ttl):
                    self._valid_until = started + new_ttl
                    if self._renewal is not None and new_ttl != self._hold_ttl:
                        self._hold_ttl = new_ttl
                        self._stop_renewal()  # its wait was sized by the old ttl
                        self._start_renewal()
                    return
                self._lost = "its ttl ran out before extend"
            reason = self._lost
        raise LockLost(self._lost_message(reason))

    def owned(self) -> bool:
        """True if this holder still has the lock, as the broker sees it now.

        False once released, lost, or past the TTL as measured here (a conservative bound)."""
        with self._mutex:
            if not self._held or self._lost is not None:
                return False
            left = self._valid_until - time.monotonic()
            if left < _MIN_VALIDITY:
                return False
            # The port has no read-only ownership check. Re-asserting the validity we
            # already count on is one: it succeeds only for our token, and leaves the
            # broker's expiry where the grant put it, give or take one network delay
            # (never compounding: ``_valid_until`` does not move).
            if self._kv.lock_extend(self.name, self.token, left):
                return True
            self._lost = "its ttl ran out"
            return False

    def _check_held(self, action: str) -> None:
        if self._forked_from is not None:
            raise LockError(
                f"cannot {action} lock {self.name!r} here: it was acquired by process "
                f"{self._forked_from}, and a forked child never holds its parent's locks"
            )
        if not self._held:
            raise LockError(
                f"cannot {action} lock {self.name!r}: this Lock does not hold it (never "
                "acquired, or already released)"
            )

    def _lost_message(self, reason: str) -> str:
        return (
            f"lock {self.name!r} (fence {self._fence}) was lost: {reason}, so another holder "
            "may have taken it and your work may have overlapped with theirs. Use a longer "
            "ttl, extend() it, or auto_renew=True; and give lk.fence to the resource you "
            "protect, so it refuses writes from a holder older than the newest it has seen"
        )

    def _release_quietly(self) -> None:
        with contextlib.suppress(LockError):
            self.release()

    # -- auto-renewal ----------------------------------------------------------------------

    def _start_renewal(self) -> None:
        """Renew from a daemon thread every ttl/3 until release, garbage collection or fork.

        The thread holds only a weak reference, so an abandoned Lock is collected, the
        renewals stop and the lock frees itself when its TTL runs out."""
        stop = threading.Event()
        self._renewal = weakref.finalize(self, stop.set)
        thread = threading.Thread(
            target=_renew_until_stopped,
            args=(weakref.ref(self), stop, self._hold_ttl / 3, os.getpid()),
            name=f"conveyor-lock-renewal:{self.name}",
            daemon=True,
        )
        thread.start()

    def _stop_renewal(self) -> None:
        if self._renewal is not None:
            self._renewal()  # sets the event once and unregisters the finalizer
            self._renewal = None

    def _renew(self, stop: threading.Event) -> float | None:
        """One renewal; the wait before the next one, or None to stop renewing."""
        with self._mutex:
            if stop.is_set() or not self._held or self._lost is not None:
                return None
            started = time.monotonic()
            try:
                renewed = self._kv.lock_extend(self.name, self.token, self._hold_ttl)
            except Exception as exc:
                # The broker may be back before our TTL runs out: keep trying until then.
                left = self._valid_until - time.monotonic()
                if left < _MIN_VALIDITY:
                    self._lost = f"renewing it failed until its ttl ran out ({exc!r})"
                    log.warning("lock %r: %s", self.name, self._lost)
                    return None
                log.warning("lock %r: renewal failed, retrying: %r", self.name, exc)
                return min(self._hold_ttl / 3, max(left / 4, _MIN_VALIDITY))
            if not renewed:
                self._lost = "its ttl ran out before it was renewed"
                log.warning("lock %r (fence %s) was lost: %s", self.name, self._fence, self._lost)
                return None
            self._valid_until = started + self._hold_ttl
            return self._hold_ttl / 3

    # -- context managers ------------------------------------------------------------------

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A LockLost raised here chains any exception from the block as its __context__.
        self.release()

    async def __aenter__(self) -> Lock:
        await self.acquire_async()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release_async()

    async def release_async(self) -> None:
        """``release`` for asyncio, off the event loop."""
        await asyncio.to_thread(self.release)


def _renew_until_stopped(
    ref: weakref.ref[Lock], stop: threading.Event, interval: float, pid: int
) -> None:
    wait: float | None = interval
    while wait is not None and not stop.wait(wait):
        lock = ref()
        if lock is None or os.getpid() != pid:
            return
        wait = lock._renew(stop)
        del lock  # hold no strong reference while sleeping


# Every Lock alive in this process, so a forked child can detach its copies.
_LIVE: weakref.WeakSet[Lock] = weakref.WeakSet()


def _detach_after_fork() -> None:
    """In a forked child: the parent's grants are not the child's, and no renewer survived.

    A copy of a held Lock must not release the parent's lock (its token would match), and
    its mutex may have been copied while another thread held it."""
    parent = os.getppid()
    for lock in list(_LIVE):
        lock._mutex = threading.Lock()
        lock._renewal = None
        if lock._held:
            lock._held = False
            lock._forked_from = parent


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_detach_after_fork)
