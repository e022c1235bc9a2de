"""Connections from a URL, and the boundary where ``redis.*`` errors become Conveyor errors.

``redis://``, ``rediss://`` (TLS) and ``unix://`` go through redis-py's ``from_url`` (user and
password in the URL, query options such as ``?socket_timeout=2``).
``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`` asks the
sentinels for the current master. hiredis is used by redis-py when installed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ..._errors import BrokerError, BrokerUnavailable, InvalidURL

try:  # redis-py's own packing goes through a Python loop over the arguments first
    from hiredis import pack_command as pack_command  # noqa: PLC0414 - re-exported to _async
except ImportError:  # hiredis is optional
    pack_command = None  # type: ignore[assignment]

SCHEMES = {"redis", "rediss", "unix", "redis+sentinel"}
DEFAULT_SOCKET_TIMEOUT = 10.0
# Blocking reads are cut into slices shorter than the socket timeout; each slice re-checks.
MAX_BLOCK_SLICE = 4.0
MAX_CONNECTIONS = 128  # per client; override with ?max_connections=N in the URL
POOL_WAIT = 30.0


@dataclass(frozen=True)
class Target:
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


def parse(url: str) -> Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "redis+cluster":
        raise InvalidURL(
            "redis+cluster:// is not supported yet: Conveyor keeps a prefix in one hash slot, "
            "so point redis:// at the shard (see docs/redis.md)"
        )
    if scheme not in SCHEMES:
        raise InvalidURL(
            f"bad redis URL {url!r}: use redis://, rediss://, unix:// or "
            "redis+sentinel://host:port/service"
        )
    if scheme != "redis+sentinel":
        return Target(url=url)
    hosts = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.partition(":")
        try:
            hosts.append((host or "localhost", int(port or 26379)))
        except ValueError as exc:
            raise InvalidURL(f"bad sentinel address {item!r} in {url!r}") from exc
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise InvalidURL(
            f"bad sentinel URL {url!r}: name the service, e.g. redis+sentinel://host:26379/mymaster"
        )
    opts: dict[str, Any] = {"db": int(path[1]) if len(path) > 1 else 0}
    if parts.username:
        opts["username"] = unquote(parts.username)
    if parts.password:
        opts["password"] = unquote(parts.password)
    opts.update(parse_qsl(parts.query))
    return Target(
        url=url, sentinels=tuple(hosts), service=path[0], options=tuple(sorted(opts.items()))
    )


def _common() -> dict[str, Any]:
    # Retrying is safe for every command we send: enqueue is idempotent on the job id and
    # every other write is fenced by a token or idempotent by construction.
    return {
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3),
        "socket_connect_timeout": 5.0,
        "health_check_interval": 15,
    }


def _with_timeout(target: Target) -> dict[str, Any]:
    # A blocking pool: past max_connections a caller waits for a free connection (up to
    # POOL_WAIT) instead of failing, so a burst of producers or waiters queues up.
    kwargs = {**_common(), "max_connections": MAX_CONNECTIONS, "timeout": POOL_WAIT}
    if "socket_timeout" not in urlsplit(target.url).query:
        kwargs["socket_timeout"] = DEFAULT_SOCKET_TIMEOUT
    return kwargs


def connect(target: Target) -> redis.Redis:
    with translate():
        if not target.sentinels:
            pool = redis.BlockingConnectionPool.from_url(target.url, **_with_timeout(target))
            return redis.Redis(connection_pool=pool)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            list(target.sentinels), socket_timeout=2.0
        )
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
            target.service, socket_timeout=DEFAULT_SOCKET_TIMEOUT, **_common(), **target.kwargs
        )
        return master


def connect_async(target: Target) -> redis.asyncio.Redis:
    with translate():
        if not target.sentinels:
            apool = redis.asyncio.BlockingConnectionPool.from_url(
                target.url, **_with_timeout(target)
            )
            return redis.asyncio.Redis(connection_pool=apool)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            list(target.sentinels), socket_timeout=2.0
        )
        master: redis.asyncio.Redis = sentinel.master_for(
            target.service, socket_timeout=DEFAULT_SOCKET_TIMEOUT, **_common(), **target.kwargs
        )
        return master


def block_slice(client: redis.Redis | redis.asyncio.Redis) -> float:
    """The longest blocking read that stays clear of the client's socket timeout."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if timeout is None:
        return MAX_BLOCK_SLICE
    return max(0.05, min(MAX_BLOCK_SLICE, float(timeout) / 2))


_fork_generation = 0  # bumped in a forked child: connections held before belong to the parent


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_forked)


MAX_HELD = 16  # threads per client that keep a connection of their own (see Pinned)


class _Held:
    """A connection checked out of a pool for one thread; handed back when the thread ends
    (its thread-local slot is dropped then, and this object with it)."""

    def __init__(self, conn: Any, handback: Any) -> None:
        self.conn = conn
        self.generation = _fork_generation
        self.handback = weakref.finalize(self, handback, conn, self.generation)


_SHARED = object()  # this thread found MAX_HELD connections held: it uses the pool


class Pinned:
    """A connection per thread kept between calls, for the hot single-command paths
    (enqueue, fetch, one finish). The ordinary ``execute_command`` checks a connection out
    of the pool and back in on every call (each checks the process id: a system call) and
    wraps the call in redis-py's retry and metrics layers; here a call is one send and one
    read. At most ``limit`` threads hold one (a producer with hundreds of threads must not
    empty the pool); the others take the ordinary path. A call that meets a connection
    error (reset, refused, a restarted server) is sent again on the ordinary path, which
    reconnects and retries: use this only for commands that are safe to send twice. A
    timeout is raised at once: the server did not answer within the socket timeout, and
    each of the ordinary path's retries would wait as long again."""

    def __init__(self, limit: int = MAX_HELD) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._limit = limit
        self._count = 0
        self._generation = _fork_generation

    def _hold(self, pool: Any) -> _Held | None:
        with self._lock:
            if self._generation != _fork_generation:  # a forked child holds nothing yet
                self._count, self._generation = 0, _fork_generation
            if self._count >= self._limit:
                return None
            self._count += 1
        try:
            return _Held(pool.get_connection(), lambda conn, gen: self._handback(pool, conn, gen))
        except BaseException:
            self._handback(pool, None, _fork_generation)
            raise

    def _handback(self, pool: Any, conn: Any, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._count -= 1
        if conn is not None:
            pool.release(conn)

    def _conn(self, client: redis.Redis) -> Any:
        """This thread's connection, or None: use the ordinary path."""
        held: Any = getattr(self._local, "held", None)
        if held is None or (held is not _SHARED and held.generation != _fork_generation):
            if held is not None:  # the parent's socket: leave it alone
                held.handback.detach()
            held = self._hold(client.connection_pool) or _SHARED
            self._local.held = held
        return None if held is _SHARED else held.conn

    def call(self, client: redis.Redis, *args: Any) -> Any:
        """One command (see ``pipeline``)."""
        return self.pipeline(client, args)[0]

    def pipeline(
        self, client: redis.Redis, *commands: Sequence[Any], transaction: bool = False
    ) -> list[Any]:
        """Several commands sent at once (in MULTI/EXEC with ``transaction``), their replies
        read in order. Redis runs them one after the other, so a command queued behind a
        blocking one runs the moment that one returns, in the same round trip. An error
        reply is raised once every reply is read (the connection stays in step)."""
        conn = self._conn(client)
        if conn is not None:
            framed = [("MULTI",), *commands, ("EXEC",)] if transaction else list(commands)
            try:
                if pack_command is not None:
                    conn.send_packed_command([pack_command(tuple(c)) for c in framed])
                else:
                    conn.send_packed_command(conn.pack_commands(framed))
                replies: list[Any] = []
                for _ in framed:
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:  # the reply is read: still in step
                        replies.append(exc)
            except redis.TimeoutError:
                conn.disconnect()
                raise
            except redis.ConnectionError:
                conn.disconnect()
            else:
                if transaction:  # OK, QUEUED per command (or its error), then EXEC's list
                    *queued, done = replies
                    for reply in queued:
                        if isinstance(reply, redis.ResponseError):
                            raise reply
                    replies = done if isinstance(done, list) else [done]
                for reply in replies:
                    if isinstance(reply, redis.ResponseError):
                        raise reply
                return replies
        if len(commands) == 1 and not transaction:
            return [client.execute_command(*commands[0])]  # type: ignore[no-untyped-call,unused-ignore]
        pipe = client.pipeline(transaction=transaction)
        for c in commands:
            pipe.execute_command(*c)  # type: ignore[no-untyped-call,unused-ignore]
        return list(pipe.execute())


# Socket-level errors redis-py sometimes lets through unwrapped (asyncio timeouts, resets).
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, TimeoutError, ConnectionError)


def _convert(exc: Exception) -> BrokerError:
    if isinstance(exc, _UNAVAILABLE):
        return BrokerUnavailable(
            f"cannot reach Redis ({exc}); check the URL, the network and that the server runs"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return BrokerError(
            f"Redis refused a command ({exc}); grant the ACL user the commands "
            "and keys listed in docs/redis.md"
        )
    return BrokerError(f"Redis failed: {exc}")


@contextlib.contextmanager
def translate() -> Iterator[None]:
    """Nothing from redis leaves the adapter: its errors become BrokerError."""
    try:
        yield
    except (redis.RedisError, TimeoutError, ConnectionError) as exc:
        raise _convert(exc) from exc


@contextlib.asynccontextmanager
async def translate_async() -> AsyncIterator[None]:
    try:
        yield
    except (redis.RedisError, TimeoutError, ConnectionError) as exc:
        raise _convert(exc) from exc
