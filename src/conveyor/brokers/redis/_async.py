"""The asyncio producer path: enqueue and wait on ``redis.asyncio``, no thread hop.

The same scripts and keys as the sync path; only the client differs (one per event loop,
created lazily by ``RedisCore._aclient``). Enqueue sends plain EVALSHA, as the sync path
does: a redis-py ``Script`` call would first ask SCRIPT EXISTS inside a pipeline and copy
keys and arguments through more layers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from ..._message import Envelope, JobRecord
from .._base import AsyncWatch
from . import _connect
from ._calls import alone, enqueue_calls, enqueue_one_args, enqueue_reply
from ._core import RECORD_FIELDS, RedisCore, to_ms
from ._errors import FULL_POLL, full


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


class _AsyncWaiting(AsyncWatch[JobRecord | None]):
    """The ``AsyncWatch`` of ``wait_async``: each look marks the job as waited for and reads
    its record (watch.lua), each sleep blocks on the job's done list (``wait``'s, awaited)."""

    def __init__(self, broker: AsyncMixin, job_id: str) -> None:
        self._broker, self._job_id = broker, job_id

    async def look(self) -> JobRecord | None:
        return await self._broker._watch_async(self._job_id)

    async def sleep_then_look(self, seconds: float) -> JobRecord | None:
        client, _ = self._broker._aclient()
        done = self._broker._keys.done(self._job_id)
        wait = min(seconds, _connect.block_slice(client))
        # redis-py types the timeout as int; Redis takes fractional seconds.
        timeout: Any = max(wait, 0.01)
        try:
            await client.blmove(done, done, timeout, "RIGHT", "LEFT")
        except redis.ResponseError as exc:
            if not full(exc):
                raise
            await asyncio.sleep(min(wait, FULL_POLL))  # a full Redis refused the BLMOVE
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
