"""Exponential backoff with jitter: pure functions of their inputs and an injected ``rand``.

``rand`` returns a float in ``[0, 1)`` (``RANDOM.random`` below, or a seeded
``Random().random``), so tests pin every delay. Jitter spreads retries out so a thousand
jobs failing together, or a hundred workers losing the broker together, do not all come
back in the same millisecond (the "full" and "decorrelated" schemes of the AWS
architecture blog's backoff study)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

Rand = Callable[[], float]

# Conveyor's own generator, for every jitter and random pick it makes: the random module's
# global one belongs to the application (a program that seeds it for repeatable runs keeps
# them; a property-based test, which checks that it stays untouched while it draws, is not
# disturbed by a worker's background threads). Reseeded in a forked child, as the global
# one is, so that forked workers do not all draw the same delays.
RANDOM = random.Random()
os.register_at_fork(after_in_child=RANDOM.seed)


def exponential(attempt: int, base: float, cap: float) -> float:
    """``base * 2**attempt``, never above ``cap``; ``attempt`` counts from 0."""
    if base <= 0 or cap <= 0:
        return 0.0
    if attempt >= 64:  # 2**64 times any sensible base is past any cap; skip the huge float
        return cap
    return min(cap, base * 2.0 ** max(attempt, 0))


def full_jitter(attempt: int, base: float, cap: float, rand: Rand) -> float:
    """A delay drawn uniformly from ``[0, exponential(attempt, base, cap))``."""
    return rand() * exponential(attempt, base, cap)


def decorrelated_jitter(previous: float, base: float, cap: float, rand: Rand) -> float:
    """The next delay after ``previous``: uniform in ``[base, 3 * previous]``, capped.

    Start with ``previous = base``; each call grows the expected delay by about 1.5x.
    """
    if base <= 0 or cap <= 0:
        return 0.0
    high = max(previous * 3.0, base)
    return min(cap, base + rand() * (high - base))


class Backoff:
    """Decorrelated backoff for a loop that keeps failing: ``delay = b.next()``, ``b.reset()``."""

    def __init__(self, base: float, cap: float, rand: Rand) -> None:
        self.base = base
        self.cap = cap
        self._rand = rand
        self._previous = base
        self.failures = 0

    def next(self) -> float:
        self._previous = decorrelated_jitter(self._previous, self.base, self.cap, self._rand)
        self.failures += 1
        return self._previous

    def reset(self) -> None:
        self._previous = self.base
        self.failures = 0
