"""How a sharded prefix's worker fetches (``_sharded``): a look at every shard, and a
sleep on every shard at once, in threads that persist: on a cluster a blocking read per
shard (its streams are on its master), on one server one read over every shard's streams
(one connection per fetching consumer, whatever S)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._message import Delivery
from .._base import Watch
from .._port import Claimed
from . import _connect
from ._core import to_ms
from ._errors import describe

if TYPE_CHECKING:
    from ._sharded import ShardedRedisBroker
    from .broker import RedisBroker

log = logging.getLogger("conveyor.redis")

_BLOCKER_IDLE = 60.0  # seconds a blocker without orders lives on before it ends


class Blocker:
    """A thread that blocks on the streams of some shards (``shards``: one on a cluster,
    all on one server) for one fetching consumer, on a connection of its own: armed with
    streams, the last ids a fetch saw and a deadline, it runs ``XREAD BLOCK`` (slices
    clear of the socket timeout, ``_connect.block_slice``: then it looks at its orders)
    until an entry comes (``woke``, the condition notified) or the deadline passes.
    Armed again while a read is still blocked, it keeps that read: a read still blocked
    has seen no entry since its ids, so the new ids are the same. It ends after
    ``_BLOCKER_IDLE`` seconds without orders, giving back its connection."""

    def __init__(
        self, shard: RedisBroker, shards: list[int], cond: threading.Condition, name: str
    ) -> None:
        self._shard, self._cond = shard, cond
        self.shards = shards  # those whose streams it reads (``shard`` serves them all)
        self.woke = False
        self._want: tuple[list[str], list[str]] | None = None
        self._slice = _connect.block_slice(shard._client)  # seconds an XREAD waits at most
        self._until = 0.0
        self._closed = False  # its thread ends (or has ended): idle, or closed
        self._shut = False  # closed with its broker: never started again
        self._name = name
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        thread.start()
        return thread

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def arm(self, streams: list[str], ids: list[str], seconds: float) -> None:
        """Called with the condition held. A thread that ended idle after the fetch found
        it alive (``alive`` is asked before the condition is taken) is started again:
        armed dead, its shards would go unwatched for the sleep."""
        if not self._shut and (self._closed or not self._thread.is_alive()):
            self._closed = False
            self._thread = self._start()
        self._want = (streams, ids)
        self._until = time.monotonic() + seconds
        self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = self._shut = True
            self._cond.notify_all()

    def _orders(self) -> tuple[list[str], list[str], float] | None:
        """Wait for orders; None: time to end."""
        with self._cond:
            idle_since = time.monotonic()
            while not self._closed:
                left = self._until - time.monotonic()
                if self._want is not None and not self.woke and left > 0:
                    streams, ids = self._want
                    return streams, ids, min(left, self._slice)
                if time.monotonic() - idle_since > _BLOCKER_IDLE:
                    self._closed = True
                    break
                self._cond.wait(_BLOCKER_IDLE / 4)
            return None

    def _loop(self) -> None:
        pool = self._shard._client.connection_pool
        conn: Any = None
        try:
            while (orders := self._orders()) is not None:
                streams, ids, wait = orders
                try:
                    if conn is None:
                        conn = pool.get_connection()
                    conn.send_command(
                        "XREAD", "COUNT", 1, "BLOCK", max(1, to_ms(wait)), "STREAMS",
                        *streams, *ids,
                    )  # fmt: skip
                    got = conn.read_response()
                except Exception as exc:  # the fetch's own look reports it
                    log.debug("a shard's blocking read failed: %s", exc)
                    if conn is not None:
                        conn.disconnect()
                    got = True
                    time.sleep(0.1)
                if got:
                    with self._cond:
                        self.woke = True
                        self._want = None
                        self._cond.notify_all()
        finally:
            if conn is not None:
                pool.release(conn)


class Fetching(Watch[Claimed]):
    """The ``Watch`` of a sharded fetch (see the module docstring)."""

    def __init__(
        self, broker: ShardedRedisBroker, queues: list[str], consumer: str, count: int, lease: float
    ) -> None:
        self._broker, self._queues = broker, queues
        self._consumer, self._count, self._lease = consumer, count, lease
        self._shards = broker._parts()
        self._last: list[list[str]] = [[] for _ in self._shards]

    def look(self) -> Claimed:
        return self._claim(self._broker._rotation())

    def sleep_then_look(self, seconds: float) -> Claimed:
        # A slice at a time, as the plain broker's (``seconds`` may be math.inf): the base
        # calls again, and a blocker armed again keeps its read.
        seconds = min(seconds, _connect.block_slice(self._shards[0]._client))
        blockers, cond = self._broker._blockers(self._consumer, self._queues)
        with cond:
            for blocker in blockers:
                streams: list[str] = []
                ids: list[str] = []
                for i in blocker.shards:
                    keys = self._shards[i]._keys
                    mine = [s for q in self._queues for s in keys.streams(q)]
                    last = self._last[i] or ["0-0"] * len(mine)
                    if len(last) > len(mine):  # a queue is paused: its resume wakes us too
                        mine.append(keys.resumed)
                    streams += mine
                    ids += last
                blocker.arm(streams, ids, seconds)
            cond.wait_for(lambda: any(b.woke for b in blockers), timeout=seconds)
            woke = {i for b in blockers if b.woke for i in b.shards}
            for b in blockers:
                b.woke = False
        order = self._broker._rotation()
        # A shard that woke has work: claim there first, then on the others while count is
        # not filled (another may have woken meanwhile). None woke: the sleep ran out, and
        # a scheduled job or a lease may have come due on any shard.
        return self._claim([*(i for i in order if i in woke), *(i for i in order if i not in woke)])

    def _claim(self, order: Sequence[int]) -> Claimed:
        """Claim on every shard in ``order`` (those that failed last time at the end, so a
        shard that hangs until its socket times out delays the others once, not at each
        look). A shard that fails is skipped: the jobs claimed on the others are handed
        out (they are running under this lease: raising would strand them until it ran
        out); only when nothing was claimed anywhere does its error reach the caller."""
        failing = self._broker._failing
        got: list[Delivery] = []
        due: float | None = None
        errors: dict[int, Exception] = {}
        for i in sorted(order, key=lambda i: i in failing):
            # Every shard is called, those after ``count`` is filled for nothing: each call
            # also makes its due scheduled jobs queued and reclaims its expired leases.
            left = max(self._count - len(got), 0)
            shard = self._shards[i]
            call = shard._fetch_call(self._queues, self._consumer, left, self._lease)
            try:
                out, next_event, self._last[i] = shard._fetch_reply(
                    self._queues, shard._eval("fetch", *call)
                )
            except Exception as exc:  # a shard's master failing over, say
                failing.add(i)
                errors[i] = exc
                continue
            failing.discard(i)
            got += out
            if next_event >= 0:
                due = next_event / 1000 if due is None else min(due, next_event / 1000)
        if errors:
            if not got:
                raise next(iter(errors.values()))
            log.warning(
                "a fetch skipped %d failing shard(s) of %r, %s: %s",
                len(errors), self._broker.prefix, sorted(errors),
                describe(next(iter(errors.values()))),
            )  # fmt: skip
        return got, None if got else due
