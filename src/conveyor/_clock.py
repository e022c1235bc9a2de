"""Time, injected: the scheduler, retries and leases read a ``Clock`` so tests need no sleep."""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Protocol

from ._errors import ConfigurationError


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (what ETAs and TTLs are written in)."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to; thread-safe."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = _finite("FakeClock(start=...)", start)
        self._lock = threading.Lock()

    def time(self) -> float:
        """Now, in seconds since the epoch."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        seconds = _finite("FakeClock.advance(seconds)", seconds)
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        """Set the clock to ``now``, in seconds since the epoch."""
        now = _finite("FakeClock.set(now)", now)
        with self._lock:
            self._now = now


def _finite(what: str, value: Any) -> float:
    """A number of seconds a clock can hold: an infinite or NaN time would make every ETA
    and TTL after it meaningless (and fail far from here)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(
            f"{what} takes a finite number of seconds, got {value!r}: e.g. advance(60), "
            "or set(datetime(2026, 1, 1, tzinfo=UTC).timestamp())"
        )
    return float(value)
