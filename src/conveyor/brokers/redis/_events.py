"""The event log on Redis: the stream ``{P}:events`` and its counter ``{P}:events:n`` (see
``_keys.py``).

A stream and not pub/sub (docs/redis.md, "Events: a capped stream, not pub/sub"): a reader
that starts late or reconnects reads what it missed from its own cursor, any number of
readers share one copy without a consumer group (nothing pending, nothing to acknowledge,
no state of theirs on the server), and a slow reader is never disconnected or waited for.

The scripts that make a change append its events in the same step (common.lua
``publish``): the events of one call share stream entries, up to 64 each, framed
``<length>:<bytes>`` (``_eventlog``), so an event costs the server a slice of one ``XADD`` rather
than an ``XADD`` of its own. Entry ids count events (an entry's id is the number of its
last event), so the cap is a count: the ``XADD`` of every 16th event trims with ``MINID``
to the newest ``events_kept``, and the oldest events go, never a job. A cursor is an event's number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import redis

from .._admin import Events
from .._base import Watch
from .._eventlog import PER_RECORD, frame, numbered, unframe
from . import _connect
from ._core import RedisCore, text, to_ms

_MORE_READS = 8  # XREADs one read_events makes at most to fill its page
# A counter the scripts count on: what INCR takes (no sign, no leading zero), below 2^53,
# which a Lua number holds exactly.
_COUNT = re.compile(r"0|[1-9][0-9]*")
_EXACT = 2**53


class _Reading(Watch[Events]):
    """The ``Watch`` of ``read_events``: an ``XREAD`` of the entries after the cursor's, that
    blocks in slices clear of the socket timeout (``BLOCK 0`` would be for ever)."""

    def __init__(self, broker: EventsMixin, start: int, limit: int) -> None:
        self._broker, self._start, self._limit = broker, start, limit

    def look(self) -> Events:
        return self._broker._read_page(self._start, self._limit, None)

    def sleep_then_look(self, seconds: float) -> Events:
        wait = min(seconds, _connect.block_slice(self._broker._client))
        return self._broker._read_page(self._start, self._limit, max(1, to_ms(wait)))


class EventsMixin(RedisCore):
    def _publish(self, events: Sequence[bytes]) -> None:
        """One call of publish.lua: in order, all at once. (A reply lost to a dropped
        connection sends it again: those events are then twice in the log. The scripts'
        events are not: enqueue and finish publish nothing again for a repeat.)"""
        keys = [self._keys.events, self._keys.events_counter]
        args = [*self._head(), self.events_kept, *(frame(e) for e in events)]
        self._eval("publish", keys, args)

    def _read_events(self, start: int, limit: int) -> _Reading:
        if not self._layout_checked:
            self._check_layout()
        return _Reading(self, start, limit)

    def _read_page(self, start: int, limit: int, wait: int | None) -> Events:
        """XREADs from the entry after ``start``'s (blocking ``wait`` ms for the first, if
        not None), then, without blocking, more until the page is full or none are left."""
        out: list[tuple[str, bytes]] = []
        per_entry = PER_RECORD  # a guess of the events per entry, then what was seen
        after = start
        for _ in range(_MORE_READS):
            count = max(1, math.ceil((limit - len(out)) / per_entry))
            reply: Any = self._client.xread(
                {self._keys.events: f"{after}-0"}, count=count, block=wait
            )
            if not reply:
                break
            (_, entries), *_ = reply
            found = [(int(text(i).partition("-")[0]), bytes(f.get(b"e", b""))) for i, f in entries]
            out += numbered(found, max(start, after), limit - len(out))
            after = found[-1][0]
            per_entry = max(1, sum(len(unframe(body)) for _, body in found) // len(found))
            if len(out) >= limit or len(entries) < count:
                break
            wait = None  # the rest of the page: only what is there already
        return out

    def _events_tail(self) -> int:
        if not self._layout_checked:
            self._check_layout()
        try:
            last = self._client.get(self._keys.events_counter)
        except redis.ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            last = None
        if last is not None and _COUNT.fullmatch(count := text(last)) and int(count) < _EXACT:
            return int(count)
        # A counter that is gone (deleted by hand) or holds what the scripts do not count on
        # (text, another type, "007", "+3", past what a Lua number holds exactly) is taken
        # as lost by the next append, numbered on from the log's last event (common.lua
        # append_entries, events_behind): that event is the tail (0 with no log yet).
        newest = self._client.xrevrange(self._keys.events, count=1)
        return int(text(newest[0][0]).partition("-")[0]) if newest else 0
