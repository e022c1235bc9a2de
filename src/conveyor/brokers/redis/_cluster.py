"""Redis Cluster: the broker's connections follow the one master that serves its slot.

Every broker key of a prefix carries the ``{P}`` hash tag (``_keys.py``), so all of them
live in one slot, served by one master at a time. The broker keeps talking to a plain
connection pool, as on a single Redis (held connections, pipelines with ``TIME``, MULTI/EXEC,
a blocking ``XREAD`` with the fetch script behind it), whose connections open to the slot's
current master: ``SlotOwner`` asks the cluster (``CLUSTER SLOTS``, of the nodes it knows,
the seeds of the URL first) which master that is, and a connection opens to it.

When the slot's master changes, a connection learns it by a reply: ``MOVED`` (the slot is
served elsewhere now: failover, resharding done), ``CLUSTERDOWN``, ``READONLY`` or
``UNBLOCKED`` (the node was demoted under a blocking read), or by the connection failing
(a killed master). Each becomes a ``ConnectionError`` once the owner is updated (``MOVED``
names the new one) or forgotten (asked again), so redis-py's retry reconnects, to the new
master, and sends the command again: safe for
every command the broker sends (``_connect``). While no master serves the slot (between a
master's death and its replica's promotion: ``cluster-node-timeout`` and an election) the
retries run out and the call raises ``BrokerUnavailable``; the worker waits and goes on.

A slot being migrated answers ``ASK`` or ``TRYAGAIN`` for a declared key already moved.
Conveyor's scripts also touch keys they compute (a job's hash), which a migration may have
moved without the declared ones: a script could then fail half-way. So scripts declare a
key that never exists (``Keys.moving``): while the slot is migrating, Redis refuses every
such call up front (a missing key in a migrating slot: ``ASK`` or ``TRYAGAIN``), and the
broker reports ``SlotMigrating`` (as ``BrokerUnavailable``) until the slot is settled.
Resharding is thus a pause, enforced by Redis itself (docs/cluster.md, "Resharding").

The key-value store's keys each have a tag of their own, so they spread over the cluster:
the store uses redis-py's ``RedisCluster`` (``store_client``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.crc import key_slot
from redis.retry import Retry

from .._url import RedisURL
from ._errors import SlotMigrating

_ASK_TIMEOUT = 2.0  # seconds for a node's CLUSTER SLOTS answer
_UNBLOCKED = "UNBLOCKED"  # a master demoted under a blocking read unblocks it so


class SlotOwner:
    """Which master serves one hash slot, as the cluster last told; thread-safe.

    ``address()`` answers from what it knows, and asks the cluster when it knows nothing
    (at first, and after ``forget``). ``nodes`` grows with every node a ``CLUSTER SLOTS``
    answer names, so the seeds of the URL may all go away once the cluster has been seen."""

    def __init__(self, seeds: Sequence[tuple[str, int]], slot: int, node: dict[str, Any]) -> None:
        self.slot = slot
        self._node = node  # how to log in to a node: user, password, TLS, timeouts
        self._lock = threading.Lock()
        self._nodes: list[tuple[str, int]] = list(dict.fromkeys(seeds))
        self._owner: tuple[str, int] | None = None

    def address(self) -> tuple[str, int]:
        found = self._owner
        return found if found is not None else self.refresh()

    def known(self) -> bool:
        return self._owner is not None

    def forget(self, address: tuple[str, int] | None = None) -> None:
        """The owner is not (or may not be) ``address`` any more: ask again next time."""
        with self._lock:
            if address is None or self._owner == address:
                self._owner = None

    def moved(self, host: str, port: int) -> None:
        with self._lock:
            self._owner = (host, port)

    def refresh(self) -> tuple[str, int]:
        with self._lock:
            if self._owner is not None:  # another thread asked meanwhile
                return self._owner
            failures = []
            for host, port in list(self._nodes):
                try:
                    ranges = self._ask(host, port)
                except redis.AuthenticationError:
                    raise  # the same login is refused by every node
                except redis.RedisError as exc:
                    failures.append(f"{host}:{port}: {exc}")
                    # Asked last next time: a dead node costs a connect timeout each time.
                    self._nodes.remove((host, port))
                    self._nodes.append((host, port))
                    continue
                owner = self._learn(ranges, host)
                if owner is not None:
                    self._owner = owner
                    return owner
                failures.append(f"{host}:{port}: no master serves slot {self.slot}")
            raise redis.ConnectionError(
                f"no node of the cluster names the master of slot {self.slot} "
                f"({'; '.join(failures)})"
            )

    def _ask(self, host: str, port: int) -> Any:
        client = redis.Redis(host=host, port=port, single_connection_client=True, **self._node)
        try:
            return client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def _learn(self, ranges: Any, asked: str) -> tuple[str, int] | None:
        """The slot's master in a ``CLUSTER SLOTS`` answer; every node named is kept."""
        owner = None
        for start, end, *nodes in ranges:
            for at, node in enumerate(nodes):
                host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
                address = (host if host not in ("", "?") else asked, int(node[1]))
                if address not in self._nodes:
                    self._nodes.append(address)
                if at == 0 and int(start) <= self.slot <= int(end):
                    owner = address
        return owner


def _redirected(owner: SlotOwner, address: tuple[str, int], exc: Exception) -> Exception | None:
    """What a reply from the node at ``address`` means for the slot's owner: a
    ``ConnectionError`` to reconnect and send again, or None (an ordinary reply)."""
    if isinstance(exc, redis.exceptions.MovedError):
        owner.moved(exc.host or address[0], int(exc.port))
        return redis.ConnectionError(f"slot {owner.slot} moved to {exc.host}:{exc.port}")
    if isinstance(exc, (redis.exceptions.AskError, redis.exceptions.TryAgainError)):
        return SlotMigrating(
            f"slot {owner.slot}, which holds the prefix's keys, is being migrated ({exc})"
        )
    if isinstance(exc, (redis.exceptions.ClusterDownError, redis.exceptions.ReadOnlyError)) or (
        str(exc).startswith(_UNBLOCKED)
    ):
        owner.forget(address)
        return redis.ConnectionError(f"the master of slot {owner.slot} changed ({exc})")
    return None


class _Follows:
    """A connection that opens to the slot's master (see the module docstring)."""

    host: str
    port: int
    owner: SlotOwner

    def _take_owner(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.owner = kwargs.pop("slot_owner")
        return kwargs

    def _aim(self) -> tuple[str, int]:
        self.host, self.port = address = self.owner.address()
        return address


class ClusterConnection(_Follows, redis.Connection):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._take_owner(kwargs))  # type: ignore[no-untyped-call]

    def _connect(self) -> Any:
        address = self._aim()
        try:
            return super()._connect()  # type: ignore[no-untyped-call]
        except OSError:
            self.owner.forget(address)
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            again = _redirected(self.owner, (self.host, self.port), exc)
            if again is None:
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            raise again from exc


class ClusterSSLConnection(ClusterConnection, redis.SSLConnection):
    pass


class AsyncClusterConnection(_Follows, redis.asyncio.Connection):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._take_owner(kwargs))

    async def _connect(self) -> Any:
        if not self.owner.known():  # asking the cluster blocks: not on the event loop
            await asyncio.to_thread(self.owner.address)
        address = self._aim()
        try:
            return await super()._connect()  # type: ignore[no-untyped-call,unused-ignore]
        except OSError:
            self.owner.forget(address)
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            again = _redirected(self.owner, (self.host, self.port), exc)
            if again is None:
                raise
            await self.disconnect()
            raise again from exc


class AsyncClusterSSLConnection(AsyncClusterConnection, redis.asyncio.SSLConnection):
    pass


def slot_of(tag: str) -> int:
    return int(key_slot(tag.encode()))


def node_kwargs(target: RedisURL, connection: dict[str, Any]) -> dict[str, Any]:
    """How ``SlotOwner`` logs in to a node to ask it: the broker's user, password and TLS,
    short timeouts, no retry (the next node is asked instead)."""
    keep = ("username", "password", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile",
            "ssl_keyfile", "ssl_check_hostname", "client_name")  # fmt: skip
    kwargs = {k: v for k, v in connection.items() if k in keep}
    kwargs.update(socket_timeout=_ASK_TIMEOUT, socket_connect_timeout=_ASK_TIMEOUT)
    # Not redis-py's default retry (8.x: 3 tries with backoff; each broker and each of its
    # shards has a SlotOwner of its own): a dead first seed cost 25 s to `stats()` on a
    # prefix of 6 shards, a hung one 3 minutes.
    kwargs["retry"] = Retry(NoBackoff(), 0)
    if target.scheme == "rediss+cluster":
        kwargs["ssl"] = True
    return kwargs


def store_client(target: RedisURL, connection: dict[str, Any]) -> redis.RedisCluster:
    """redis-py's cluster client, for the key-value store (its keys spread over slots)."""
    kwargs = {k: v for k, v in connection.items() if k != "db"}
    if target.scheme == "rediss+cluster":
        kwargs["ssl"] = True
    if (most := target.option("max_connections")) is not None:
        kwargs["max_connections"] = most
    nodes = [ClusterNode(host, port) for host, port in target.hosts]  # type: ignore[no-untyped-call]
    return redis.RedisCluster(startup_nodes=nodes, **kwargs)
