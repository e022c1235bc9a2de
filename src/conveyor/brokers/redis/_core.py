"""Shared state of the Redis broker: clients, keys, scripts, the clock, record decoding.

Time: on the real clock (``SystemClock``) every decision is made on the Redis server's
``TIME`` (scripts read it themselves when ARGV ``now`` is ''; Python reads it in the same
pipeline), so workers and producers whose clocks disagree still agree on leases and expiry.
An injected fake clock (tests) is passed to the scripts as ``now`` instead.
"""

from __future__ import annotations

import contextlib
import threading
from asyncio import AbstractEventLoop, Task, get_running_loop, run_coroutine_threadsafe
from collections.abc import Sequence
from typing import Any

import msgspec
import redis
import redis.asyncio
import redis.exceptions

from ..._clock import Clock
from ..._errors import BrokerUnavailable, ConfigurationError, InvalidName
from ..._message import JobRecord, JobStatus, validate_queue
from .._base import EVENTS_KEPT
from .._port import Broker
from .._url import key_prefix
from . import _connect
from ._errors import TRANSLATE
from ._keys import Keys
from ._scripts import Scripts

RECORD_FIELDS = (
    "status",
    "queue",
    "result",
    "progress",
    "note",
    "updated_at",
    "expires_at",
    "deliveries",
    "reason",
)
# Where a job's payload is: the hash's field, else the stream entry ``sid`` of the queue's
# priority stream (a job due at enqueue carries it there; see _keys.py).
PAYLOAD_FIELDS = ("payload", "sid", "queue", "priority", "expires_at")


# Scripts that take a variable number of KEYS and count them, and touch only those: the
# cluster's migration guard (``Keys.moving``, added after the KEYS of every other script)
# would be taken for one of theirs, and they need none (Redis checks declared keys itself).
UNGUARDED = frozenset({"queued", "ended", "heartbeat", "forget"})
WAIT_TIMEOUT = 1.0  # seconds an enqueue waits for ?wait=N replicas, unless ?wait_timeout=


def to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def time_ms(reply: Any) -> int:
    """A ``TIME`` reply (seconds, microseconds) in ms."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_prefix(prefix: str) -> str:
    # The prefix becomes a hash tag: braces or odd characters would move keys between slots.
    try:
        return validate_queue(prefix)
    except InvalidName as exc:
        raise InvalidName(f"bad key prefix {prefix!r}: {exc}") from None


class RedisCore(Broker):
    """What every part of the Redis broker shares; a primitive runs inside ``TRANSLATE``."""

    _errors = TRANSLATE

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        clock: Clock | None = None,
        sweep_idle: float | None = None,
        events_kept: int = EVENTS_KEPT,
        tag: str | None = None,
        share: RedisCore | None = None,
    ) -> None:
        super().__init__(url, clock=clock, events_kept=events_kept)
        self._target = _connect.parse(url)
        # prefix=, else the URL's ?prefix=, else "conveyor"; both given must agree.
        self.prefix = check_prefix(key_prefix(prefix, self._target))
        # tag: a shard of a sharded prefix (``_sharded``), its keys under a tag of its own.
        self._keys = Keys(self.prefix, tag)
        # On a cluster: the master of the prefix's slot, followed by both clients (_cluster).
        self._owner = _connect.slot_owner(self._target, self._keys.tag)
        self._guard = () if self._owner is None else (self._keys.moving,)
        # share: another broker on the same server (not a cluster: a pool follows one
        # slot's master), whose client and held connections this one uses too.
        self._shared = share is not None and self._owner is None
        self._client: redis.Redis = (
            share._client
            if share is not None and self._owner is None
            else _connect.connect(self._target, self._owner)
        )
        # ?wait=N: an enqueue is acknowledged once N replicas have it (``_replicated``).
        wanted = self._target.option("wait")
        self._durable: tuple[tuple[str, int, int], ...] = ()
        if wanted is not None:
            timeout = to_ms(self._target.option("wait_timeout", WAIT_TIMEOUT))
            self._durable = (("WAIT", wanted, max(timeout, 1)),)
        # Whether the prefix was looked at for a sharded layout (``check_layout``): a
        # plain broker refuses a sharded prefix; a shard or a sharded prefix's home is one.
        self._layout_checked = False
        self._scripts = Scripts(self._client)
        self._pinned = _connect.Pinned()
        if share is not None and self._shared:
            self._scripts, self._pinned = share._scripts, share._pinned
        self._sweep_idle = sweep_idle
        # The asyncio clients by loop (``_aclient``). Not weak: a client's connections hold
        # their loop, so its entry would never go; a closed loop's is dropped by hand.
        self._async: dict[AbstractEventLoop, tuple[redis.asyncio.Redis, Scripts]] = {}
        self._async_lock = threading.Lock()

    # -- helpers (called inside TRANSLATE) ----------------------------------------------
    # The real clock: time comes from the server (``_real_time``).

    def _script_now(self) -> int | str:
        """ARGV ``now`` of a script: '' (the server's TIME) on the real clock."""
        return "" if self._real_time else to_ms(self._clock.time())

    def _now(self, server_time: Any = None) -> int:
        """Now in ms: the server's on the real clock (from a ``TIME`` reply sent in the same
        pipeline as the read it judges, or a round trip of its own), else the fake clock's."""
        if not self._real_time:
            return to_ms(self._clock.time())
        if server_time is None:
            server_time = self._client.time()
        return time_ms(server_time)

    def _head(self) -> list[Any]:
        """The ARGV every script starts with (see common.lua)."""
        k = self._keys
        return [self._script_now(), "conveyor", k.job_prefix, k.done_prefix]

    def _eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call (see ``_run``)."""
        return self._run(script, [(keys, args)])[0]

    def _run(
        self,
        script: str,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        *,
        transaction: bool = False,
        replicated: bool = False,
    ) -> list[Any]:
        """Script calls (keys, args) sent at once as plain EVALSHA on this thread's held
        connection (``_connect.Pinned``), in MULTI/EXEC with ``transaction``; their replies
        in order. ``replicated``: with ``?wait=N`` in the URL, a ``WAIT`` follows on the same
        connection, and fewer than N replicas within ``?wait_timeout=`` raises
        (``_replicated``). (redis-py's ``Script`` objects would first ask SCRIPT EXISTS inside a
        pipeline, one more round trip, and copy keys and arguments through more layers.)
        A server that lost its script cache (restart, failover) answers NOSCRIPT to every
        call, so none ran there: load the script and send them again. (Every script sent
        this way is idempotent for a repeat, so a call that did run before a restart is
        safe to repeat too.)"""
        if not self._layout_checked:
            self._check_layout()
        found = self._scripts[script]
        guard = () if script in UNGUARDED else self._guard
        for again in (False, True):
            commands = [
                ("EVALSHA", found.sha, len(keys) + len(guard), *keys, *guard, *args)
                for keys, args in calls
            ]
            then = self._durable if replicated else ()
            try:
                replies = self._pinned.pipeline(
                    self._client, *commands, transaction=transaction, then=then
                )
                return self._replicated(replies) if then else replies
            except redis.exceptions.NoScriptError:
                if again:
                    raise
                self._load(script)
        raise AssertionError("unreachable")

    def _check_layout(self, found: Any = "") -> None:
        """Refuse a prefix sharded with ``?shards=`` (its layout key is set): a plain broker
        would write jobs no worker of it reads, and find none of its jobs or events. Once
        per broker, at its first script call, record read, listing or event read;
        ``found``: the layout key's value (None: unset), when read already."""
        if found == "":
            found = self._client.get(self._keys.shards)
        if found is not None:
            shards = msgspec.json.decode(found, type=dict[str, Any]).get("shards", "?")
            raise ConfigurationError(
                f"the key prefix {self.prefix!r} is sharded over {shards} shards (it was "
                f"first used with ?shards={shards}): add ?shards={shards} to the broker URL "
                "of every producer, worker and command on it, see docs/cluster.md"
            )
        self._layout_checked = True

    def _replicated(
        self, replies: list[Any], what: str = "the enqueue", then: str = "it may still run"
    ) -> list[Any]:
        """The replies of a write followed by ``WAIT`` (its count last), without it; raises
        ``BrokerUnavailable`` when fewer replicas than ``?wait=`` had the write in time."""
        *replies, count = replies
        (_, wanted, timeout_ms) = self._durable[0]
        if int(count) < wanted:
            raise BrokerUnavailable(
                f"only {int(count)} of the {wanted} replica(s) the broker URL asks for "
                f"(?wait={wanted}) had {what} within {timeout_ms / 1000:g} s: the master "
                f"has it, but would lose it if it failed now, so it is not acknowledged ({then})."
                " Check the replicas (INFO replication), or raise ?wait_timeout= "
                "(docs/cluster.md)"
            )
        return replies

    def _load(self, script: str) -> None:
        """Load a script into the server's cache (on this thread's connection, like the
        calls that need it)."""
        found = self._scripts[script]
        found.sha = text(self._pinned.call(self._client, "SCRIPT", "LOAD", found.script))

    def _payloads(self, rows: Sequence[Sequence[Any]]) -> list[bytes | None]:
        """The payloads of jobs read with ``PAYLOAD_FIELDS``: the hash's, else the one
        their stream entry carries (read in one pipeline for all that need it). An ended
        job (``expires_at`` set) has its payload in the hash or none: its entry is gone,
        and the ``sid`` it kept names nothing."""
        out = [None if p is None else bytes(p) for p, *_ in rows]
        wanted = [(i, row) for i, row in enumerate(rows) if row[0] is None and row[1]
                  and not row[4]]  # fmt: skip
        if wanted:
            pipe = self._client.pipeline(transaction=False)
            for _, (_, sid, queue, priority, _) in wanted:
                pipe.xrange(self._keys.stream(text(queue), int(priority)), sid, sid)
            entries = pipe.execute()
            for (i, _), found in zip(wanted, entries, strict=True):
                if found:
                    payload = found[0][1].get(b"payload")
                    out[i] = None if payload is None else bytes(payload)
        return out

    def _aclient(self) -> tuple[redis.asyncio.Redis, Scripts]:
        """The asyncio client of the running loop, created on first use (one per loop:
        redis.asyncio connections belong to the loop that opened them). A new loop's first
        call drops the clients of the loops closed since, and closes their sockets
        (``_close_dead``): each ``asyncio.run`` is a loop of its own."""
        loop = get_running_loop()
        with self._async_lock:
            found = self._async.get(loop)
            if found is None:
                for dead in [x for x in self._async if x.is_closed()]:
                    _close_dead(self._async.pop(dead)[0])
                client = _connect.connect_async(self._target, self._owner)
                found = (client, Scripts(client))
                self._async[loop] = found
            return found

    def _decode_record(self, job_id: str, row: Sequence[Any], now: int) -> JobRecord | None:
        status, queue, result, progress, note, updated, expires, deliveries, reason = row
        if status is None:
            return None
        if expires and int(expires) <= now:
            return None
        state = JobStatus(text(status))
        return JobRecord(
            id=job_id,
            status=state,
            queue=text(queue or b""),
            result=bytes(result) if result and state.terminal else None,
            progress=float(progress) if progress else None,
            progress_note=text(note) if note is not None else None,
            updated_at=int(updated or 0) / 1000,
            deliveries=int(deliveries or 0),  # enqueue writes no count: none yet
            reason=text(reason or b""),
        )

    def _watch(self, job_id: str) -> JobRecord | None:
        """A waiter's first read of a record: marks the job as waited for in the same step
        (watch.lua), so its end pushes the completion signal (none is pushed otherwise)."""
        now, row = self._eval("watch", [self._keys.job(job_id)], [*self._head(), *RECORD_FIELDS])
        return self._decode_record(job_id, row, int(now))

    def _read_records(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        pipe = self._client.pipeline(transaction=False)
        pipe.time()
        for job_id in job_ids:
            pipe.hmget(self._keys.job(job_id), RECORD_FIELDS)
        checked = self._layout_checked
        if not checked:  # the layout key rides along (``_check_layout``)
            pipe.get(self._keys.shards)
        server_time, *rows = pipe.execute()
        if not checked:
            self._check_layout(rows.pop())
        now = self._now(server_time)
        return [self._decode_record(i, row, now) for i, row in zip(job_ids, rows, strict=True)]

    def _by_id(self, script: str, job_id: str, own: list[Any], moved: Any) -> Any:
        """Run a script on a job known by id alone: read its queue (for the queue keys),
        then run; the script answers ``moved`` if the queue changed in between."""
        for _ in range(5):
            queue = self._client.hget(self._keys.job(job_id), "queue")
            if queue is None:
                return None
            keys = self._keys.job_keys(job_id, [text(queue)])
            res = self._eval(script, keys, [*self._head(), text(queue), *own])
            if res != moved:
                return res
        return None

    async def _aclose(self) -> None:
        with self._async_lock:
            found = self._async.pop(get_running_loop(), None)
        if found is not None:
            await _aclose_client(found[0])

    def _close(self) -> None:
        with self._async_lock:
            clients = list(self._async.items())
            self._async.clear()
        for loop, (client, _) in clients:
            _close_async(loop, client)
        if not self._shared:  # the sharing broker closes it
            _close_client(self._client)
        store = getattr(self, "_store_client", None)  # a cluster's, once the store was used
        if store is not None:
            _close_client(store)


def _close_client(client: Any) -> None:
    """Close a client and its connections: a client given its pool (``_connect``) leaves
    the pool's sockets open on ``close()``, for the pool's owner to close (``_pools``)."""
    client.close()
    for pool in _pools(client):
        pool.disconnect()


_CLOSING: set[Task[None]] = set()  # closes scheduled on a running loop, kept till they end


def _close_async(loop: AbstractEventLoop, client: redis.asyncio.Redis) -> None:
    """Close an asyncio client on its own loop, from ``close()``: scheduled there when it is
    this thread's running loop (``aclose`` awaits it instead), awaited a moment when it runs
    in another thread, its sockets closed here when the loop is closed (``_close_dead``)."""
    if loop.is_closed():
        _close_dead(client)
        return
    if not loop.is_running():
        return
    try:
        running = get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        task = loop.create_task(_aclose_client(client))
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)
        return
    done = run_coroutine_threadsafe(_aclose_client(client), loop)
    with contextlib.suppress(Exception):  # a busy or stopping loop: its end closes them
        done.result(1.0)


def _close_dead(client: redis.asyncio.Redis) -> None:
    """Close the sockets of an asyncio client whose loop is closed. Closing a loop closes
    none of its sockets, and ``aclose`` needs the loop: each connection is marked
    disconnected and its transport closed here (``_close_transport``)."""
    for pool in _pools(client):
        for conn in [*pool._available_connections, *pool._in_use_connections]:
            writer = conn._writer
            conn._reader = conn._writer = None  # as a disconnect leaves it: nothing warns
            if writer is not None:
                _close_transport(writer.transport)


def _close_transport(transport: Any) -> None:
    """Close a transport of a closed loop: ``close()`` marks it closing (so neither it nor
    its stream warns later) and leaves closing the socket to its loop, which refuses; that
    step, the socket transport's ``_call_connection_lost``, is run here (a TLS transport's
    is the socket transport under it)."""
    with contextlib.suppress(RuntimeError):  # "Event loop is closed"
        transport.close()
    under: Any = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    for layer in (transport, under):
        if getattr(layer, "_sock", None) is None:  # not a socket transport, or closed
            continue
        # Its protocol's callbacks need the loop and may raise; it closes the socket anyway.
        with contextlib.suppress(Exception):
            layer._call_connection_lost(None)


def _pools(client: Any) -> list[Any]:
    """A client's connection pools: its own (a cluster client has none: it closes its
    nodes') and, on a Sentinel URL, those of the sentinels it asks for the master (each
    asyncio loop's client has sentinel clients of its own)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return []
    sentinels = getattr(getattr(pool, "sentinel_manager", None), "sentinels", ())
    return [pool, *(s.connection_pool for s in sentinels)]


async def _aclose_client(client: redis.asyncio.Redis) -> None:
    """``_close_client`` for an asyncio client (its pools' sockets too, ``_pools``)."""
    await client.aclose()
    for pool in _pools(client):
        await pool.disconnect()
