"""The event log on Redis: one stream, ``{P}:events`` (see ``_keys.py``), capped.

A stream and not pub/sub (docs/redis.md, "Events: a capped stream, not pub/sub"): a reader
that starts late or reconnects reads what it missed from its own cursor (an entry id), any
number of readers share one copy without a consumer group (nothing pending, nothing to
acknowledge, no state of theirs on the server), and a slow reader is never disconnected or
waited for. The cap bounds the memory: every ``XADD`` trims with ``MAXLEN ~`` (whole nodes
of the oldest entries, so at least the cap stay), and the oldest events go, never a job.

Events of enqueue and finish are written by those scripts, in the same atomic step
(common.lua ``publish``); ``publish`` here is for the rest (a worker's started and
heartbeat events between finishes, requeue, cancel).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from .._port import bad_cursor, check_read
from . import _connect
from ._core import RedisCore, text, to_ms

_ENTRY_ID = re.compile(r"^\d+-\d+$")


def _cursor(after: str | None) -> str:
    """A stream entry id from a cursor this broker gave (None: before the first)."""
    if after is None:
        return "0-0"
    if not isinstance(after, str) or not _ENTRY_ID.match(after):
        raise bad_cursor(after)
    return after


class EventsMixin(RedisCore):
    events_kept: int

    def publish(self, events: Sequence[bytes]) -> None:
        """One ``MULTI``/``EXEC`` of ``XADD``s: in order, all or none, one round trip. (A
        reply lost to a dropped connection sends it again: those events are then twice in
        the log. The scripts' events are not: enqueue and finish publish nothing again for
        a repeat.)"""
        if not events:
            return
        key, cap = self._keys.events, self.events_kept
        commands = [("XADD", key, "MAXLEN", "~", cap, "*", "e", e) for e in events]
        with _connect.translate():
            self._pinned.pipeline(self._client, *commands, transaction=True)

    def read_events(self, after: str | None, block: float, limit: int) -> list[tuple[str, bytes]]:
        """``XREAD`` from the cursor, blocking in slices that stay clear of the socket
        timeout (``BLOCK 0`` would be for ever: a block of 0 sends none)."""
        check_read(block, limit)
        start = _cursor(after)
        deadline = time.monotonic() + block
        key = self._keys.events
        while True:
            left = deadline - time.monotonic()
            wait = (
                None if left <= 0 else max(1, to_ms(min(left, _connect.block_slice(self._client))))
            )
            with _connect.translate():
                reply: Any = self._client.xread({key: start}, count=limit, block=wait)
            if reply:
                (_, entries), *_ = reply
                # An entry written by hand without an event reads as b"", which no reader
                # takes for one.
                return [(text(i), bytes(fields.get(b"e", b""))) for i, fields in entries]
            if deadline - time.monotonic() <= 0:
                return []

    def events_tail(self) -> str:
        with _connect.translate():
            top = self._client.xrevrange(self._keys.events, count=1)
        return text(top[0][0]) if top else "0-0"
