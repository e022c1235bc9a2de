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
last event), so the cap is a count: every ``XADD`` trims with ``MINID`` to the newest
``events_kept``, and the oldest events go, never a job. A cursor is an event's number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from .._eventlog import PER_RECORD, frame, numbered, unframe
from .._port import check_read, event_number
from . import _connect
from ._core import RedisCore, text, to_ms

_MORE_READS = 8  # XREADs one read_events makes at most to fill its page


class EventsMixin(RedisCore):
    events_kept: int

    def publish(self, events: Sequence[bytes]) -> None:
        """One call of publish.lua: in order, all at once. (A reply lost to a dropped
        connection sends it again: those events are then twice in the log. The scripts'
        events are not: enqueue and finish publish nothing again for a repeat.)"""
        if not events:
            return
        keys = [self._keys.events, self._keys.events_counter]
        args = [*self._head(), self.events_kept, *(frame(e) for e in events)]
        with _connect.translate():
            self._eval("publish", keys, args)

    def read_events(self, after: str | None, block: float, limit: int) -> list[tuple[str, bytes]]:
        """``XREAD`` of the entries after the cursor's, blocking in slices that stay clear
        of the socket timeout (``BLOCK 0`` would be for ever: a block of 0 sends none);
        then, without blocking, more entries until the page is full or none are left."""
        check_read(block, limit)
        start = event_number(after)
        deadline = time.monotonic() + block
        while True:
            left = deadline - time.monotonic()
            slice_ = min(left, _connect.block_slice(self._client))
            wait = max(1, to_ms(slice_)) if left > 0 else None
            got = self._read_page(start, limit, wait)
            if got or deadline - time.monotonic() <= 0:
                return got

    def _read_page(self, start: int, limit: int, wait: int | None) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        per_entry = PER_RECORD  # a guess of the events per entry, then what was seen
        after = start
        for _ in range(_MORE_READS):
            count = max(1, math.ceil((limit - len(out)) / per_entry))
            with _connect.translate():
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

    def events_tail(self) -> str:
        with _connect.translate():
            last = self._client.get(self._keys.events_counter)
        return text(last) if last is not None else "0"
