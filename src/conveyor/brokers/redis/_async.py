"""The asyncio producer path: enqueue and wait on ``redis.asyncio``, no thread hop.

The same scripts and keys as the sync path; only the client differs (one per event loop,
created lazily by ``RedisCore._aclient``). Enqueue sends plain EVALSHA, as the sync path
does: a redis-py ``Script`` call would first ask SCRIPT EXISTS inside a pipeline and copy
keys and arguments through more layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio

from ..._message import Envelope, JobRecord
from .._base import AsyncWatch
from . import _connect
from ._calls import alone, enqueue_calls, enqueue_one_args, enqueue_reply
from ._core import RECORD_FIELDS, RedisCore, text, to_ms
from ._errors import full
from ._scripts import NOTIFY_TTL_MS


async def _call(client: redis.asyncio.Redis, args: tuple[Any, ...]) -> Any:
    """One command on a pooled connection, packed by hiredis when it is installed
    (redis.asyncio packs in a Python loop over the arguments: ~20% of an enqueue_async).
    A connection error sends it again on the ordinary path (reconnect, retries), which is
    safe for every script (enqueue is idempotent on the id), as in ``_connect.Pinned``."""
    if _connect.pack_command is None:
        return await client.execute_command(*args)
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command([_connect.pack_command(args)])
        return await conn.read_response()
    except redis.TimeoutError:
        await conn.disconnect()
        raise
    except redis.ConnectionError:
        await conn.disconnect()
    finally:
        await pool.release(conn)
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


class _DoneLists:
    """The done lists of every job waited for on one event loop, watched over one
    connection (``wait_async``): a waiter per pooled connection would hold them all while
    the jobs run, and the loop's enqueues would wait for one (128 waiters: for 30 s, then
    fail as if Redis were away).

    One ``BLPOP`` blocks on all of them and on a wake list of its own, which a waiter whose
    list is not among the ``BLPOP``'s pushes to (once per ``BLPOP``): the next one takes it
    in. A list popped is pushed again at once (other waiters, here or in other processes,
    wake on it too; see _keys.py) and its waiters here are woken: they read the record."""

    def __init__(self, wake: str) -> None:
        self._wake = wake
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._blocked_on: frozenset[str] | None = None  # the keys of the BLPOP in flight
        self._poked = False  # the wake list was pushed since that BLPOP went out
        self._task: asyncio.Task[None] | None = None

    async def sleep(self, client: redis.asyncio.Redis, key: str, seconds: float) -> None:
        """Until the list ``key`` is pushed to, or ``seconds`` pass (``client``: the loop's,
        whose this is; not kept, as it is the key of ``_LISTS``). Raises what the ``BLPOP``
        was refused with (a dropped connection only wakes the waiters)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(key, set()).add(future)
        try:
            if self._task is None or self._task.done():
                self._task = loop.create_task(self._run(client))
            elif self._blocked_on is not None and key not in self._blocked_on:
                await self._poke(client)
            await asyncio.wait_for(future, seconds)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiting.get(key)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiting[key]

    async def _poke(self, client: redis.asyncio.Redis) -> None:
        """Push the wake list: the ``BLPOP`` in flight returns and the next one takes the
        new list in. Not pushed (a full Redis, a dropped connection): the ``BLPOP`` takes
        it in when its slice ends."""
        if self._poked:
            return
        self._poked = True
        with contextlib.suppress(redis.RedisError):
            await _call(client, ("EVAL", _PUSH, 1, self._wake, _WAKE_TTL_MS))

    async def _run(self, client: redis.asyncio.Redis) -> None:
        pool = client.connection_pool
        seconds = f"{_connect.block_slice(client):.3f}"
        conn: Any = None
        clean = False
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            while self._waiting:
                keys = [*self._waiting, self._wake]
                self._blocked_on, self._poked = frozenset(keys), False
                await conn.send_command("BLPOP", *keys, seconds)
                reply = await conn.read_response()
                self._blocked_on = None
                if reply is None or text(reply[0]) == self._wake:
                    continue
                key = text(reply[0])
                # Back at once, for every other waiter on it (no wait for the reply: the
                # next BLPOP's comes after it, on this connection).
                await conn.send_command("EVAL", _PUSH, 1, key, NOTIFY_TTL_MS)
                self._wake_up(self._waiting.pop(key, ()))
                try:
                    await conn.read_response()
                except redis.ResponseError as exc:  # a full Redis: the others' slices end
                    if not full(exc):
                        raise
            clean = True
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self._wake_up(self._everyone())  # they read the record: that call retries
        except Exception as exc:
            for future in self._everyone():
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._task, self._blocked_on = None, None  # a waiter from now on starts anew
            if conn is not None:
                if not clean:
                    await conn.disconnect()
                await pool.release(conn)

    def _everyone(self) -> list[asyncio.Future[None]]:
        return [future for waiters in self._waiting.values() for future in waiters]

    @staticmethod
    def _wake_up(futures: Iterable[asyncio.Future[None]]) -> None:
        for future in futures:
            if not future.done():  # one whose wait timed out is cancelled
                future.set_result(None)


# One list element, the list expiring: a done list's expiry as common.lua's notify gives it
# (NOTIFY_TTL_MS), a wake list's in case its process is gone before its BLPOP pops it.
_PUSH = "redis.call('LPUSH', KEYS[1], '1') redis.call('PEXPIRE', KEYS[1], ARGV[1])"
_WAKE_TTL_MS = 60_000
_LISTS: weakref.WeakKeyDictionary[redis.asyncio.Redis, _DoneLists] = weakref.WeakKeyDictionary()


class _AsyncWaiting(AsyncWatch[JobRecord | None]):
    """The ``AsyncWatch`` of ``wait_async``: each look marks the job as waited for and reads
    its record (watch.lua), each sleep waits for the job's done list (``_DoneLists``)."""

    def __init__(self, broker: AsyncMixin, job_id: str) -> None:
        self._broker, self._job_id = broker, job_id

    async def look(self) -> JobRecord | None:
        return await self._broker._watch_async(self._job_id)

    async def sleep_then_look(self, seconds: float) -> JobRecord | None:
        client, _ = self._broker._aclient()
        lists = _LISTS.get(client)
        if lists is None:
            wake = f"{self._broker._keys.tag}:wake:{secrets.token_hex(8)}"
            lists = _LISTS[client] = _DoneLists(wake)
        done = self._broker._keys.done(self._job_id)
        await lists.sleep(client, done, min(seconds, _connect.block_slice(client)))
        return await self.look()


class AsyncMixin(RedisCore):
    async def _enqueue_async(
        self, envelopes: Sequence[Envelope], events: Sequence[bytes]
    ) -> list[str]:
        return (await self._enqueue_load_async(envelopes, events, load=False))[0]

    async def _enqueue_load_async(
        self, envelopes: Sequence[Envelope], events: Sequence[bytes], *, load: bool = True
    ) -> tuple[list[str], int]:
        """``_enqueue_async``, and the load signal of ``_enqueue_load``."""
        client, scripts = self._aclient()
        if not self._layout_checked:
            self._check_layout(await client.get(self._keys.shards))
        env = alone(envelopes)
        if env is not None:  # the usual task.delay(): enqueue_one.lua (as the sync path)
            args = enqueue_one_args(self._script_now(), env, events, self.events_kept, load)
            calls = [([self._keys.queues], args)]
            (length,) = await self._run_async(client, scripts["enqueue_one"], calls)
            if length is not None:
                return [env.id], length
        now_ms = to_ms(self._clock.time())
        calls = enqueue_calls(
            self._keys, self._head(), envelopes, now_ms, events=events, cap=self.events_kept
        )
        return enqueue_reply(await self._run_async(client, scripts["enqueue"], calls))

    async def _run_async(
        self, client: redis.asyncio.Redis, script: Any, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Script calls, as the sync path's ``_run`` sends them: one alone, several in
        MULTI/EXEC, ``WAIT`` after them with ``?wait=N``."""
        guard = self._guard
        for again in (False, True):
            commands = [
                ("EVALSHA", script.sha, len(keys) + len(guard), *keys, *guard, *argv)
                for keys, argv in calls
            ]
            try:
                if self._durable:
                    return await self._replicated_async(client, commands)
                if len(commands) == 1:  # atomic on its own: no MULTI
                    return [await _call(client, commands[0])]
                pipe = client.pipeline(transaction=True)
                for command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute())
            except redis.exceptions.NoScriptError:
                # The server lost its script cache (restart, failover): every call
                # answered NOSCRIPT, none ran. Load the script and send them again.
                if again:
                    raise
                await client.script_load(script.script)
        raise AssertionError("unreachable")

    async def _replicated_async(
        self, client: redis.asyncio.Redis, commands: list[tuple[Any, ...]]
    ) -> list[Any]:
        """The calls (in MULTI/EXEC if several), then ``WAIT`` on the same connection, as
        the sync path sends them (``_connect.Pinned.pipeline``)."""
        many = len(commands) > 1
        pipe = client.pipeline(transaction=False)  # framed by hand: WAIT after EXEC
        for command in [("MULTI",), *commands, ("EXEC",)] if many else commands:
            pipe.execute_command(*command)
        pipe.execute_command(*self._durable[0])
        done = await pipe.execute(raise_on_error=False)
        return self._replicated(_connect.settle(list(done), many, 1))

    async def _watch_async(self, job_id: str) -> JobRecord | None:
        """As ``_watch``: read the record and mark the job as waited for, in one step."""
        client, scripts = self._aclient()
        if not self._layout_checked:
            self._check_layout(await client.get(self._keys.shards))
        now, row = await scripts["watch"](
            keys=[self._keys.job(job_id)], args=[*self._head(), *RECORD_FIELDS]
        )
        return self._decode_record(job_id, row, int(now))

    def _wait_async(self, job_id: str) -> _AsyncWaiting:
        return _AsyncWaiting(self, job_id)
