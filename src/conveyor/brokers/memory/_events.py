"""The memory broker's event log."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Sequence

from .._admin import Events
from .._base import check_kept
from ._state import OnCondition


class EventRing:
    """The event log: a ring of the newest events (``deque(maxlen)``: a full one drops its
    oldest), each numbered; the number is its cursor. It has its own lock, so a publish
    never wakes a blocked fetch and a reader never holds up the broker's lock."""

    def __init__(self, kept: int) -> None:
        self._cond = threading.Condition()
        self._ring: deque[tuple[int, bytes]] = deque(maxlen=check_kept(kept))
        self.last = 0  # the number of the newest event ever appended

    def resize(self, kept: int) -> None:
        with self._cond:
            self._ring = deque(self._ring, maxlen=kept)

    def append(self, events: Sequence[bytes]) -> None:
        if not events:
            return
        with self._cond:
            for event in events:
                self.last += 1
                self._ring.append((self.last, bytes(event)))
            self._cond.notify_all()

    def after(self, start: int, limit: int) -> OnCondition[Events]:
        def look() -> Events:
            ring = self._ring
            if not ring or ring[-1][0] <= start:
                return []
            skip = max(start - ring[0][0] + 1, 0)
            return [(str(n), e) for n, e in itertools.islice(ring, skip, skip + limit)]

        return OnCondition(self._cond, look)
