"""The asyncio producer path: enqueue and wait on ``redis.asyncio``, no thread hop.

The same scripts and keys as the sync path; only the client differs (one per event loop,
created lazily by ``RedisCore._aclient``). Enqueue sends plain EVALSHA, as the sync path
does: a redis-py ``Script`` call would first ask SCRIPT EXISTS inside a pipeline and copy
keys and arguments through more layers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from ..._errors import JobNotFound
from ..._message import Envelope, JobRecord
from . import _connect
from ._core import RECORD_FIELDS, RedisCore, to_ms


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


class AsyncMixin(RedisCore):
    async def enqueue_async(self, envelopes: Sequence[Envelope]) -> list[str]:
        from .broker import enqueue_calls, enqueue_ids  # the one place they are built

        if not envelopes:
            return []
        client, scripts = self._aclient()
        calls = enqueue_calls(self._keys, self._head(), envelopes, to_ms(self._clock.time()))
        script = scripts["enqueue"]
        async with _connect.translate_async():
            for again in (False, True):
                commands = [
                    ("EVALSHA", script.sha, len(keys), *keys, *argv) for keys, argv in calls
                ]
                try:
                    if len(commands) == 1:  # atomic on its own: no MULTI
                        replies = [await _call(client, commands[0])]
                    else:  # MULTI/EXEC, as the sync path
                        pipe = client.pipeline(transaction=True)
                        for command in commands:
                            pipe.execute_command(*command)
                        replies = await pipe.execute()
                except redis.exceptions.NoScriptError:
                    # The server lost its script cache (restart, failover): every call
                    # answered NOSCRIPT, none ran. Load the script and send them again.
                    if again:
                        raise
                    await client.script_load(script.script)
                else:
                    return enqueue_ids(replies)
        raise AssertionError("unreachable")

    async def _watch_async(self, job_id: str) -> JobRecord | None:
        """As ``_watch``: read the record and mark the job as waited for, in one step."""
        _, scripts = self._aclient()
        async with _connect.translate_async():
            now, row = await scripts["watch"](
                keys=[self._keys.job(job_id)], args=[*self._head(), *RECORD_FIELDS]
            )
        return self._decode_record(job_id, row, int(now))

    async def wait_async(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """As ``wait``: read the record, then block on the job's done list (never missed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        client, _ = self._aclient()
        done = self._keys.done(job_id)
        while True:
            record = await self._watch_async(job_id)
            if record is None:
                raise JobNotFound(f"no job with id {job_id!r} (unknown, purged or expired)")
            if record.status.terminal:
                return record
            wait = _connect.block_slice(client)
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            async with _connect.translate_async():
                # redis-py types the timeout as int; Redis takes fractional seconds.
                seconds: Any = max(wait, 0.01)
                try:
                    await client.blmove(done, done, seconds, "RIGHT", "LEFT")
                except redis.ResponseError as exc:
                    if not _connect.full(exc):
                        raise
                    await asyncio.sleep(min(wait, _connect.FULL_POLL))  # a full Redis
