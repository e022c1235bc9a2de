"""The Redis Streams broker: producing, consuming and job records.

One stream per queue and priority (0..9) with one consumer group; leases are our own (a
per-delivery token and an expiry, on the server's clock, see ``_core``, kept in the job hash
and the queue's ``running`` set), and the pending-entries list records who holds each entry.
Every state change is one Lua script (see the ``.lua`` files); the key schema is in
``_keys.py``. Blocking is a plain ``XREAD BLOCK`` on the streams' last ids, so waiting for
work never delivers anything outside a script and never spins; the fetch script is
pipelined right behind it, so a job reaching an idle worker is delivered in one round trip.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Self, cast

import redis.exceptions

from ..._clock import Clock
from ..._message import Delivery, Envelope, JobRecord, JobStatus
from ...stores._port import KeyValue
from .._base import EVENTS_KEPT, BrokerOptions, Watch
from .._eventlog import bodies, frame
from .._port import Claimed, Finish, LeaseState
from . import _connect
from ._admin import AdminMixin
from ._async import AsyncMixin
from ._calls import (
    FINISH_CHUNK,
    alone,
    batch_calls,
    enqueue_calls,
    enqueue_one_args,
    enqueue_reply,
    finish_values,
    with_events,
)
from ._core import PAYLOAD_FIELDS, RECORD_FIELDS, text, to_ms
from ._errors import FULL_POLL, full
from ._events import EventsMixin
from ._health import HealthMixin
from .store import RedisKV

log = logging.getLogger("conveyor.redis")

_LEASE_STATES = {0: LeaseState.LOST, 1: LeaseState.OK, 2: LeaseState.CANCELLED}


class _Fetching(Watch[Claimed]):
    """The ``Watch`` of ``fetch``: a look is one call of fetch.lua; a sleep is an ``XREAD``
    on the queues' streams with the next fetch.lua call behind it (``_block_then_fetch``),
    in slices clear of the socket timeout."""

    def __init__(
        self, broker: RedisBroker, queues: list[str], consumer: str, count: int, lease: float
    ) -> None:
        self._broker, self._queues = broker, queues
        self._consumer, self._count, self._lease = consumer, count, lease
        self._last_ids: list[str] = []

    def look(self) -> Claimed:
        b = self._broker
        return self._read(b._eval("fetch", *self._call(woken=False)))

    def sleep_then_look(self, seconds: float) -> Claimed:
        b = self._broker
        wait = min(seconds, _connect.block_slice(b._client))
        call = lambda: self._call(woken=b._real_time)  # noqa: E731 - read after the sleep
        return self._read(b._block_then_fetch(self._queues, self._last_ids, wait, call))

    def _call(self, *, woken: bool) -> tuple[list[str], list[Any]]:
        return self._broker._fetch_call(
            self._queues, self._consumer, self._count, self._lease, woken=woken
        )

    def _read(self, reply: Any) -> Claimed:
        out, next_event, self._last_ids = self._broker._fetch_reply(self._queues, reply)
        return out, None if next_event < 0 else next_event / 1000  # ms to the next due


class _Waiting(Watch[JobRecord | None]):
    """The ``Watch`` of ``wait``: the first look marks the job as waited for (watch.lua), so
    its end pushes the completion signal; a sleep is a ``BLMOVE`` on the job's done list
    with the record read again in the same pipeline."""

    def __init__(self, broker: RedisBroker, job_id: str) -> None:
        self._broker, self._job_id = broker, job_id

    def look(self) -> JobRecord | None:
        return self._broker._watch(self._job_id)

    def sleep_then_look(self, seconds: float) -> JobRecord | None:
        b, job_id = self._broker, self._job_id
        done = b._keys.done(job_id)
        wait = min(seconds, _connect.block_slice(b._client))
        # Moving the list onto itself pops nothing: every waiter wakes, and a signal
        # pushed between our read and this call is already there (no lost wake-up).
        # The record is read again in the same pipeline: Redis runs those commands
        # right after the BLMOVE returns, saving a round trip after the wake-up.
        pipe = b._client.pipeline(transaction=False)
        # redis-py types the timeout as int; Redis takes fractional seconds.
        timeout: Any = max(wait, 0.01)
        pipe.blmove(done, done, timeout, "RIGHT", "LEFT")
        pipe.time()
        pipe.hmget(b._keys.job(job_id), RECORD_FIELDS)
        moved, server_time, row = pipe.execute(raise_on_error=False)
        for reply in (moved, server_time, row):  # only BLMOVE may be refused as full
            if isinstance(reply, Exception) and not full(reply):
                raise reply
        record = b._decode_record(job_id, row, b._now(server_time))
        if isinstance(moved, Exception) and record and not record.status.terminal:
            time.sleep(min(wait, FULL_POLL))  # a full Redis refused the BLMOVE
        return record


class RedisBroker(AdminMixin, HealthMixin, AsyncMixin, EventsMixin):
    """``Conveyor("redis://...")``: the production broker on Redis Streams (Redis >= 6.2).

    ``prefix``: the key prefix, else the URL's ``?prefix=``, else ``conveyor`` (both given
    must be the same name).

    ``sweep_idle`` is how long (real seconds) a pending entry must sit idle before the
    XAUTOCLAIM sweep takes it over; by default twice the lease of the fetch that sweeps.

    Consumer names of stopped workers are removed from the groups: by ``forget_worker`` on
    a clean stop, and by ``fetch`` (at most every ``reap_every`` real seconds per queue) for
    consumers idle ``reap_idle`` seconds with nothing pending, e.g. of killed workers.
    """

    reap_every: float = 3600.0
    reap_idle: float = 86400.0

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        clock: Clock | None = None,
        sweep_idle: float | None = None,
        events_kept: int = EVENTS_KEPT,
        tag: str | None = None,
        share: RedisBroker | None = None,
    ) -> None:
        super().__init__(
            url,
            prefix=prefix,
            clock=clock,
            sweep_idle=sweep_idle,
            events_kept=events_kept,
            tag=tag,
            share=share,
        )
        # On a cluster the store's keys spread over slots: redis-py's cluster client, made
        # on first use (it asks the cluster for its slots as it is made).
        self._kv: RedisKV | None = None
        self._kv_lock = threading.Lock()
        if self._owner is None:
            self._kv = RedisKV(self._client, prefix=self.prefix, clock=self._clock)
        self._levels: dict[str, str] = {}  # queue -> its priority streams last seen (fetch.lua)

    @classmethod
    def from_url(cls, url: str, options: BrokerOptions) -> Self:
        shards = _connect.parse(url).option("shards")
        if shards is not None:  # one prefix over several shards: a broker made of brokers
            from ._sharded import ShardedRedisBroker

            sharded = ShardedRedisBroker(
                url,
                shards=shards,
                prefix=options.prefix,
                clock=options.clock,
                events_kept=options.events_kept,
                create=options.create,
            )
            return cast(Self, sharded)
        return cls(url, prefix=options.prefix, clock=options.clock, events_kept=options.events_kept)

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            with self._kv_lock, self._errors:
                if self._kv is None:
                    self._store_client = _connect.connect_store(self._target)
                    self._kv = RedisKV(self._store_client, prefix=self.prefix, clock=self._clock)
        return self._kv

    # -- producing -------------------------------------------------------------------------

    def _enqueue(self, envelopes: Sequence[Envelope], events: Sequence[bytes]) -> list[str]:
        return self._enqueue_load(envelopes, events, load=False)[0]

    def _enqueue_load(
        self, envelopes: Sequence[Envelope], events: Sequence[bytes], *, load: bool = True
    ) -> tuple[list[str], int]:
        """``_enqueue``, and the length of the stream its last job due now went into (-1:
        none, or not asked for with ``load=False``): a sharded prefix's load signal
        (``_sharded``)."""
        env = alone(envelopes)
        if env is not None:  # the usual task.delay(): enqueue_one.lua
            args = enqueue_one_args(self._script_now(), env, events, self.events_kept, load)
            (length,) = self._run("enqueue_one", [([self._keys.queues], args)], replicated=True)
            if length is not None:
                return [env.id], length
            # Nothing was written: the id is taken (enqueue.lua tells a live job from an
            # expired record), or the job's stream is not made yet (enqueue.lua makes it).
        now_ms = to_ms(self._clock.time())
        calls = enqueue_calls(
            self._keys, self._head(), envelopes, now_ms, events=events, cap=self.events_kept
        )
        # One script call is atomic on its own; several go in MULTI/EXEC: a batch is written
        # whole or not at all.
        replies = self._run("enqueue", calls, transaction=len(calls) > 1, replicated=True)
        return enqueue_reply(replies)

    # -- consuming -------------------------------------------------------------------------

    def _fetch(self, queues: list[str], consumer: str, count: int, lease: float) -> _Fetching:
        return _Fetching(self, queues, consumer, count, lease)

    def _fetch_call(
        self, queues: list[str], consumer: str, count: int, lease: float, *, woken: bool = False
    ) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        for q in queues:
            keys += self._keys.queue_keys(q)
        keys += (self._keys.unique, self._keys.paused, self._keys.resumed)
        sweep = to_ms(self._sweep_idle if self._sweep_idle is not None else 2 * lease)
        raw = secrets.token_hex(8 * count)  # one urandom call, not one per token
        tokens = [raw[i : i + 16] for i in range(0, len(raw), 16)]
        levels = self._levels.get(queues[0], "") if len(queues) == 1 else ""
        args = [
            *self._head(),
            consumer,
            count,
            to_ms(lease),
            max(sweep, 1),
            to_ms(self.reap_every),
            to_ms(self.reap_idle),
            len(queues),
            *queues,
            levels,
            "1" if woken else "0",
            *tokens,
        ]
        return keys, args

    def _fetch_reply(self, queues: list[str], reply: Any) -> tuple[list[Delivery], int, list[str]]:
        out, next_event, recreated, last_ids, levels = reply
        if len(queues) == 1:  # the queue's priority levels in use, for the next call
            self._levels[queues[0]] = text(levels)
        if recreated:
            log.warning(
                "conveyor: %d consumer group(s) were missing on queues %s and were recreated "
                "from the start of their streams. Redis lost its data (restart without "
                "persistence, or eviction: set maxmemory-policy noeviction) or a stream was "
                "written by hand; entries may be delivered again.",
                recreated,
                queues,
            )
        # (Bulk replies are bytes: this client never decodes them. Decoded in place, not
        # through `text`: a call less per field of every delivery.)
        deliveries = [
            Delivery(
                id=i.decode(),
                queue=q.decode(),
                payload=p,
                token=t.decode(),
                deliveries=n,
                priority=pr,
            )
            for i, q, p, t, n, pr in out
        ]
        return deliveries, int(next_event), [text(s) for s in last_ids]

    def _block_then_fetch(
        self,
        queues: list[str],
        last_ids: list[str],
        wait: float,
        fetch_call: Callable[[], tuple[list[str], list[Any]]],
    ) -> Any:
        """Sleep in Redis until any of the queues' streams gets a new entry, or ``wait``
        passes, then fetch. The sleep is a plain XREAD from the last ids the script saw:
        nothing is delivered by it, and an entry added since the script ran wakes it at
        once (no lost wake-up); the script also gave the resume signal stream's last id,
        and a ``resume``, or a job scheduled to come due soon, wakes the XREAD the same
        way. On the real
        clock the fetch script is sent right behind it in the same round trip, and Redis
        runs it the moment the XREAD returns: a job reaching an idle worker is delivered
        without a second round trip. (On an injected clock the script's ``now`` must be read
        after the sleep, so it is sent after.)"""
        streams = [*(s for q in queues for s in self._keys.streams(q)), self._keys.resumed]
        xread = ["XREAD", "COUNT", 1, "BLOCK", max(1, to_ms(wait)), "STREAMS", *streams, *last_ids]
        if not self._real_time:
            self._pinned.call(self._client, *xread)
            return self._eval("fetch", *fetch_call())
        keys, args = fetch_call()
        declared = [*keys, *self._guard]  # as _run declares them
        script = self._scripts["fetch"]
        try:
            _, reply = self._pinned.pipeline(
                self._client, xread, ["EVALSHA", script.sha, len(declared), *declared, *args]
            )
        except redis.exceptions.NoScriptError:  # the script cache was lost: load it
            reply = self._eval("fetch", keys, args)
        return reply

    def _fenced(self, script: str, items: Sequence[tuple[str, str, list[Any]]]) -> list[int]:
        """Run a per-delivery script for each (job id, queue, args) in one round trip."""
        head = self._head()
        calls = [(self._keys.job_keys(job_id, [queue]), head + own) for job_id, queue, own in items]
        return [int(r) for r in self._run(script, calls)]  # each call atomic on its own

    def _renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        items = [(d.id, d.queue, [d.token, to_ms(lease)]) for d in deliveries]
        states = [_LEASE_STATES[r] for r in self._fenced("renew", items)]
        if LeaseState.LOST in states:
            self._recheck()  # Redis may have lost its data (_health.py)
        return states

    def _release(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return [
            r == 1
            for r in self._fenced("release", [(d.id, d.queue, [d.token]) for d in deliveries])
        ]

    def _progress(self, delivery: Delivery, value: float, note: str | None) -> bool:
        own = [delivery.token, repr(float(value)), note or "", "0" if note is None else "1"]
        return self._fenced("progress", [(delivery.id, delivery.queue, own)]) == [1]

    def _finish(self, outcomes: Sequence[Finish], events: Sequence[bytes]) -> list[bool]:
        """One script call per ``FINISH_CHUNK`` outcomes (each call atomic; the chunks go in
        one round trip): the queue keys are declared once per call, not once per job.
        ``events`` ride on the first call, each outcome's event on the call of its chunk."""

        def declare(queues: list[str]) -> list[str]:
            keys = [self._keys.unique, self._keys.queues]
            for q in queues:
                keys += self._keys.queue_keys(q)
            return keys

        now_ms = to_ms(self._clock.time())  # a retry's eta is sent as time left (enqueue_args)

        def values(f: Finish, place: Callable[[str], int]) -> list[Any]:
            return finish_values(f, place, now_ms)

        def carried(start: int, end: int) -> list[Any]:
            # Joined here into entry bodies (finish.lua): the server then makes no string
            # per event and joins none, unless some outcome is refused.
            own = [] if start else list(events)  # the call's: on the first chunk
            chunk = outcomes[start:end]
            flags = "".join(["0" if f.event is None else "1" for f in chunk])
            joined = bodies([*own, *(f.event for f in chunk if f.event is not None)])
            return with_events([*joined, len(own), flags, len(joined)], self.events_kept)

        has_events = bool(events) or any(f.event is not None for f in outcomes)
        tail = carried if has_events else None
        calls = batch_calls(self._head(), outcomes, FINISH_CHUNK, values, declare, tail=tail)
        replies = self._run("finish", calls)
        written = [int(r) == 1 for reply in replies for r in reply]
        if not all(written):
            self._recheck()  # Redis may have lost its data (_health.py)
        return written

    # -- job records -----------------------------------------------------------------------

    def _get(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        return self._read_records(list(job_ids))

    def _payload(self, job_id: str) -> bytes | None:
        if not self._layout_checked:
            self._check_layout()
        for _ in range(5):  # the entry may go between the two reads, its payload moved
            pipe = self._client.pipeline(transaction=False)
            pipe.time()
            pipe.hmget(self._keys.job(job_id), PAYLOAD_FIELDS)
            server_time, row = pipe.execute()
            payload, sid, *_, expires = row
            if expires and int(expires) <= self._now(server_time):
                return None
            if payload is not None or not sid or expires:  # no entry to look in (_payloads)
                return None if payload is None else bytes(payload)
            found = self._payloads([row])[0]
            if found is not None:
                return found
            # The entry went between the two reads: its payload moved into the hash.
        return None

    def _wait(self, job_id: str) -> _Waiting:
        return _Waiting(self, job_id)

    def _cancel(self, job_id: str, event: bytes | None) -> JobStatus | None:
        own = [] if event is None else with_events([frame(event)], self.events_kept)
        res = self._by_id("cancel", job_id, own, b"moved")
        if res is None or res == b"missing":
            return None
        return JobStatus(text(res))

    def _promote(self, job_id: str, payload: bytes) -> bool:
        return bool(self._by_id("promote", job_id, [payload], -1) == 1)
