"""Connections from a URL (the boundary where ``redis.*`` errors become Conveyor errors is
``_errors``).

The URL is read by ``brokers._url`` (hosts, ports, database, user and password, the options
of docs/redis.md, each checked), and the clients are built from what it read: nothing is
handed to redis-py's own URL parser, so what was checked is what connects.
``redis://`` and ``rediss://`` (TLS) connect to one server, ``unix://`` to a socket;
``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`` asks the
sentinels for the current master (``?sentinel_password=`` when the sentinels have one of
their own). ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``: TLS) names
seed nodes of a Redis Cluster: the broker's pool opens its connections to the master that
serves the prefix's slot, and follows it (``_cluster``). hiredis is used by redis-py when
installed.

A refused login is not retried (``_Retry``): the same credentials are refused again. Nor is
a timeout: a server that did not answer within the socket timeout is not a blip, each retry
would wait as long again (a never-answering server held a one-shot command for 4 x 10 s),
and a write it timed out on may have been applied.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ..._errors import ConfigurationError
from .._url import CLUSTER_SCHEMES, RedisURL, parse_redis_url
from ._errors import TRANSLATE, DatabaseOutOfRange, out_of_range

if TYPE_CHECKING:
    from . import _cluster

try:  # redis-py 8: what CLIENT SETINFO names (below)
    from redis.driver_info import DriverInfo
except ImportError:  # redis-py < 8 reads its version once, when imported
    DriverInfo = None  # type: ignore[assignment,misc,unused-ignore]

try:  # redis-py's own packing goes through a Python loop over the arguments first
    from hiredis import pack_command as pack_command  # noqa: PLC0414 - re-exported to _async
except ImportError:  # hiredis is optional
    pack_command = None  # type: ignore[assignment]

DEFAULT_SOCKET_TIMEOUT = 10.0
SENTINEL_SOCKET_TIMEOUT = 2.0
# Blocking reads are cut into slices shorter than the socket timeout; each slice re-checks.
MAX_BLOCK_SLICE = 4.0
MAX_CONNECTIONS = 128  # per client; override with ?max_connections=N in the URL
POOL_WAIT = 30.0  # override with ?timeout=S
_CONNECTION_OPTIONS = (
    "client_name",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
T = TypeVar("T")


def parse(url: str) -> RedisURL:
    """The URL read and checked; ``InvalidURL`` (without its password) when it is bad."""
    return parse_redis_url(url)


class _Refused(Exception):
    """Carries a refused login through redis-py's retry loop, which retries every
    ``ConnectionError`` (``AuthenticationError`` is one)."""

    def __init__(self, error: redis.AuthenticationError) -> None:
        super().__init__()
        self.error = error


# What redis-py's retry sends again: connection errors only, not its default's timeouts
# (see the module's docstring). Blocking reads never meet the socket timeout (block_slice).
_RETRIED = (redis.ConnectionError,)


class _Retry(Retry):
    """redis-py's retry with backoff for connection errors, except for a refused login: the
    same credentials are refused again, and each attempt would only make the caller wait.
    A timeout is raised at once."""

    def __init__(self, backoff: Any, retries: int) -> None:
        super().__init__(backoff, retries, supported_errors=_RETRIED)

    def call_with_retry(self, do: Callable[[], T], fail: Any, *args: Any, **kwargs: Any) -> T:
        def attempt() -> T:
            try:
                return do()
            except redis.AuthenticationError as exc:
                raise _Refused(exc) from exc

        try:
            return super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None


class _AsyncRetry(redis.asyncio.retry.Retry):
    """``_Retry`` for redis.asyncio."""

    def __init__(self, backoff: Any, retries: int) -> None:
        super().__init__(backoff, retries, supported_errors=_RETRIED)

    async def call_with_retry(  # type: ignore[override,unused-ignore]
        self, do: Callable[[], Awaitable[T]], fail: Any, *args: Any, **kwargs: Any
    ) -> T:
        async def attempt() -> T:
            try:
                return await do()
            except redis.AuthenticationError as exc:
                raise _Refused(exc) from exc

        try:
            return await super().call_with_retry(attempt, fail, *args, **kwargs)
        except _Refused as refused:
            raise refused.error from None


def _connection(target: RedisURL, retry: Any) -> dict[str, Any]:
    """Keyword arguments of every connection to the server (not to the sentinels)."""
    kwargs: dict[str, Any] = {
        # Retrying a connection error is safe for every command we send: enqueue is
        # idempotent on the job id and every other write is fenced by a token or idempotent
        # by construction. Timeouts are not retried (_Retry).
        "retry": retry,
        "socket_connect_timeout": 5.0,
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        "health_check_interval": 15,
        "db": target.db,
        "username": target.username,
        "password": target.password,
    }
    kwargs.update((name, value) for name, value in target.options if name in _CONNECTION_OPTIONS)
    if DriverInfo is not None:
        kwargs["driver_info"] = _driver()
    return kwargs


def _driver() -> Any:
    """Who connects, for the server's CLIENT LIST (``lib-name=redis-py(conveyor_v0.1.0)``),
    with redis-py's version given: left to itself, redis-py 8 reads it from the installed
    package's metadata (a scan of ``sys.path``) at a process's first connection, ~2-4 ms of
    a worker's start-up."""
    from ... import __version__

    return DriverInfo(lib_version=redis.__version__).add_upstream_driver("conveyor", __version__)


# redis-py sends a health-check PING before the handshake of every new socket (its first
# command finds the check due): a round trip before a worker's first fetch that asks
# nothing a socket opened a moment ago could answer. The connections of a server's pool
# send the handshake (AUTH or HELLO, CLIENT SETINFO, SELECT) without it; the checks of
# ``health_check_interval`` go on as before once it has been answered.
_HANDSHAKE = hasattr(redis.Connection, "on_connect_check_health")  # else: the PING stays


def _handshake(conn: Any) -> None:
    """The handshake; its SELECT refusing the URL's database is raised with the number
    (``_errors.DatabaseOutOfRange``), which the error's message names."""
    try:
        conn.on_connect_check_health(check_health=False)
    except redis.ResponseError as exc:
        if not out_of_range(exc):
            raise
        raise DatabaseOutOfRange(conn.db) from exc


async def _handshake_async(conn: Any) -> None:
    try:
        await conn.on_connect_check_health(check_health=False)
    except redis.ResponseError as exc:
        if not out_of_range(exc):
            raise
        raise DatabaseOutOfRange(conn.db) from exc


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=1.0)


def _pool(
    target: RedisURL, retry: Any, tls: type, unix: type, owner: _cluster.SlotOwner | None = None
) -> dict[str, Any]:
    """A blocking pool's arguments: past max_connections a caller waits for a free
    connection (up to POOL_WAIT) instead of failing, so a burst of producers or waiters
    queues up."""
    kwargs = _connection(target, retry)
    kwargs["max_connections"] = target.option("max_connections", MAX_CONNECTIONS)
    kwargs["timeout"] = target.option("timeout", POOL_WAIT)
    if target.scheme == "unix":
        kwargs.update(connection_class=unix, path=target.socket)
    elif owner is not None:  # a cluster: the connection class aims at the slot's master
        kwargs.update(slot_owner=owner, connection_class=tls)
        kwargs["host"], kwargs["port"] = target.hosts[0]  # until the owner is known
        del kwargs["db"]
    else:
        [(kwargs["host"], kwargs["port"])] = target.hosts
        if target.scheme == "rediss":
            kwargs["connection_class"] = tls
    return kwargs


def _sentinel(target: RedisURL, retry: Any) -> dict[str, Any]:
    """Keyword arguments of the connections to the sentinels themselves."""
    kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
        "socket_connect_timeout": target.option("socket_connect_timeout", 5.0),
        "retry": retry,
    }
    for name in ("username", "password"):
        if (value := target.option(f"sentinel_{name}")) is not None:
            kwargs[name] = value
    return kwargs


def _master(target: RedisURL, retry: Any) -> dict[str, Any]:
    kwargs = _connection(target, retry)
    if (most := target.option("max_connections")) is not None:
        kwargs["max_connections"] = most
    return kwargs


# redis-py runs MULTI/EXEC on a cluster client (the store's ``update``) from 6.1 on.
CLUSTER_CLIENT_FLOOR = (6, 1)


def check_cluster_client(version: str | None = None) -> None:
    """Refuse a cluster URL on a redis-py too old for it, saying what to install."""
    found = version if version is not None else redis.__version__
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    if parts < CLUSTER_CLIENT_FLOOR:
        floor = ".".join(map(str, CLUSTER_CLIENT_FLOOR))
        raise ConfigurationError(
            f"redis+cluster:// needs redis-py {floor} or newer (this environment has "
            f"{found}, whose cluster client cannot run the store's transactions); "
            f"upgrade it: pip install 'redis>={floor}'"
        )


def slot_owner(target: RedisURL, tag: str) -> _cluster.SlotOwner | None:
    """Where a cluster URL's connections for keys of ``tag`` go (None: not a cluster URL);
    shared by the sync and asyncio clients of one broker."""
    if target.scheme not in CLUSTER_SCHEMES:
        return None
    from . import _cluster

    check_cluster_client()
    node = _cluster.node_kwargs(target, _connection(target, None))
    return _cluster.SlotOwner(target.hosts, _cluster.slot_of(tag), node)


def connect(target: RedisURL, owner: _cluster.SlotOwner | None = None) -> redis.Redis:
    # The cluster's and the sentinels' modules are imported by the URLs that use them: a
    # worker's first job comes sooner without them (docs/architecture.md, "Start-up").
    with TRANSLATE:
        if owner is not None:
            from . import _cluster

            tls = target.scheme == "rediss+cluster"
            kind = _cluster.ClusterSSLConnection if tls else _cluster.ClusterConnection
            pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call,unused-ignore]
                **_pool(target, _Retry(_backoff(), 3), kind, kind, owner)
            )
            return redis.Redis(connection_pool=pool)
        if target.scheme != "redis+sentinel":
            kwargs = _pool(target, _Retry(_backoff(), 3), redis.SSLConnection,
                           redis.UnixDomainSocketConnection)  # fmt: skip
            if _HANDSHAKE:
                kwargs["redis_connect_func"] = _handshake
            pool = redis.BlockingConnectionPool(**kwargs)  # type: ignore[no-untyped-call,unused-ignore]
            return redis.Redis(connection_pool=pool)
        from redis.sentinel import Sentinel

        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            list(target.hosts), sentinel_kwargs=_sentinel(target, _Retry(_backoff(), 1))
        )
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
            target.service, **_master(target, _Retry(_backoff(), 3))
        )
        return master


def connect_async(target: RedisURL, owner: _cluster.SlotOwner | None = None) -> redis.asyncio.Redis:
    with TRANSLATE:
        if owner is not None:
            from . import _cluster

            tls = target.scheme == "rediss+cluster"
            kind = _cluster.AsyncClusterSSLConnection if tls else _cluster.AsyncClusterConnection
            apool = redis.asyncio.BlockingConnectionPool(
                **_pool(target, _AsyncRetry(_backoff(), 3), kind, kind, owner)
            )
            return redis.asyncio.Redis(connection_pool=apool)
        if target.scheme != "redis+sentinel":
            kwargs = _pool(target, _AsyncRetry(_backoff(), 3), redis.asyncio.SSLConnection,
                           redis.asyncio.UnixDomainSocketConnection)  # fmt: skip
            if _HANDSHAKE:
                kwargs["redis_connect_func"] = _handshake_async
            apool = redis.asyncio.BlockingConnectionPool(**kwargs)
            return redis.asyncio.Redis(connection_pool=apool)
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel

        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call,unused-ignore]
            list(target.hosts), sentinel_kwargs=_sentinel(target, _AsyncRetry(_backoff(), 1))
        )
        master: redis.asyncio.Redis = sentinel.master_for(
            target.service, **_master(target, _AsyncRetry(_backoff(), 3))
        )
        return master


def connect_store(target: RedisURL) -> redis.RedisCluster:
    """The key-value store's client on a cluster (its keys spread over slots); on a
    single server the broker's own client serves the store."""
    from . import _cluster

    with TRANSLATE:
        return _cluster.store_client(target, _connection(target, _Retry(_backoff(), 3)))


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
    sending it again on the ordinary path would wait as long again."""

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
        return self._one(client, self._conn(client), args)

    def _one(self, client: redis.Redis, conn: Any, command: Sequence[Any]) -> Any:
        """One command on ``conn`` (None: the ordinary path), as ``pipeline`` sends them,
        without the framing of several (the usual ``task.delay()``: ~1 µs less)."""
        if conn is not None:
            try:
                if pack_command is not None:
                    conn.send_packed_command([pack_command(tuple(command))])
                else:
                    conn.send_packed_command(conn.pack_command(*command))
                return conn.read_response()  # an error reply raises, read: still in step
            except redis.ResponseError:
                raise
            except redis.TimeoutError:
                conn.disconnect()
                raise
            except redis.ConnectionError:
                conn.disconnect()
            except BaseException:  # (see pipeline)
                conn.disconnect()
                raise
        return client.execute_command(*command)  # type: ignore[no-untyped-call,unused-ignore]

    def pipeline(
        self,
        client: redis.Redis,
        *commands: Sequence[Any],
        transaction: bool = False,
        then: Sequence[Sequence[Any]] = (),
    ) -> list[Any]:
        """Several commands sent at once (in MULTI/EXEC with ``transaction``), their replies
        read in order. Redis runs them one after the other, so a command queued behind a
        blocking one runs the moment that one returns, in the same round trip. An error
        reply is raised once every reply is read (the connection stays in step). ``then``:
        commands sent after those (after EXEC), on the same connection (``WAIT`` counts the
        replicas that have this connection's writes), their replies after the others'."""
        conn = self._conn(client)
        if len(commands) == 1 and not transaction and not then:
            return [self._one(client, conn, commands[0])]
        framed = [("MULTI",), *commands, ("EXEC",)] if transaction else list(commands)
        framed += then
        if conn is not None:
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
            except BaseException:
                # Anything else between the send and the last read (a job thread's cancel
                # or time limit, raised in it at any bytecode): replies may be left unread,
                # which the thread's next command would read as its own.
                conn.disconnect()
                raise
            else:
                return settle(replies, transaction, len(then))
        if not then:
            pipe = client.pipeline(transaction=transaction)
            for c in commands:
                pipe.execute_command(*c)  # type: ignore[no-untyped-call,unused-ignore]
            return list(pipe.execute())
        pipe = client.pipeline(transaction=False)  # framed by hand: ``then`` after EXEC
        for c in framed:
            pipe.execute_command(*c)  # type: ignore[no-untyped-call,unused-ignore]
        return settle(list(pipe.execute(raise_on_error=False)), transaction, len(then))


def settle(replies: list[Any], transaction: bool, then: int) -> list[Any]:
    """The replies of a pipeline sent framed by hand (``Pinned.pipeline``): in a transaction,
    OK and QUEUED (or an error) per command, then EXEC's list; the ``then`` replies last.
    The first error reply is raised."""
    after = replies[len(replies) - then :] if then else []
    replies = replies[: len(replies) - then]
    if transaction:
        *queued, done = replies
        for reply in queued:
            if isinstance(reply, redis.ResponseError):
                raise reply
        replies = done if isinstance(done, list) else [done]
    for reply in (*replies, *after):
        if isinstance(reply, redis.ResponseError):
            raise reply
    return [*replies, *after]
