"""The brokers the tests run on: one list, read by every tier.

``BROKERS`` has an entry per adapter of the registry (``conveyor.brokers._registry``;
``test_every_registered_adapter_is_tested`` fails until a new one has its entry), and each
tier takes the entries it can run:

* ``unit/`` (no sockets): the embedded ones, ``params(embedded=True)``;
* ``contract/``: all of them, the conformance suites on each of an entry's ``clocks``;
* ``integration/`` and ``torture/``, which run ``conveyor worker`` subprocesses on one
  broker: those several processes can share, ``params(shared=True)`` (``integration/``
  leaves out the entries marked ``integration=False``: the Redis Cluster, whose adapter is
  the Redis one, which that tier runs already; its own tests are in
  ``integration/test_redis_cluster.py``); ``torture/test_worker_faults.py`` leaves out those
  marked ``workers=False`` (``redis-sharded``: the sharded adapter on one server, which
  ``redis-cluster-sharded`` runs there already, on the cluster; its sleeps cost the suite
  ~85 s);
* ``torture/test_model.py`` and ``test_broker_races.py``: all of them.

An entry says how a test gets a broker of its own: ``place(request, root, server)`` gives a
``Place``, whose ``new()`` is a fresh, empty target (a URL, and the key prefix it keeps to)
each time it is called. ``server`` says what the test does to a server-backed broker:
``"shared"``, nothing (the session's server, a prefix of the test's own); ``"fresh"``, kill
or restart it (a server of the test's own); ``"durable"``, the same, and nothing it
acknowledged may be lost (a server that syncs every write before replying).
``place.restart`` kills such a server and starts it again from what it kept (None for an
embedded broker).

A new adapter adds one ``TestBroker`` line, with the function that places it. An adapter
may have several entries, one per way it connects that needs its own server (Redis: one
server, or a cluster, ``redis-cluster``): ``adapter`` names the registry's adapter, ``name``
the entry (the test ids).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from conveyor._clock import Clock
from conveyor.brokers import Broker, open_broker
from postgres_server import schema_url
from redis_cluster import CLI_BINARY
from redis_server import SERVER_BINARY, unique_prefix

Server = Literal["shared", "fresh", "durable"]


@dataclass(frozen=True)
class Target:
    """Where a fresh broker is: its URL and the key prefix its keys go under."""

    url: str
    prefix: str = "conveyor"
    store: str | None = None  # the record store of a broker that keeps its records in one

    def open(self, clock: Clock | None = None, **options: Any) -> Broker:
        return open_broker(self.url, clock=clock, prefix=self.prefix, store=self.store, **options)

    def app_options(self) -> dict[str, Any]:
        """``Conveyor(url, **options)`` on this target."""
        return {"prefix": self.prefix, "store": self.store}

    def env(self) -> dict[str, str]:
        """The environment a ``conveyor`` command on this target needs beside CONVEYOR_URL."""
        return {"CONVEYOR_STORE_URL": self.store} if self.store else {}


@dataclass(frozen=True)
class Place:
    """Fresh targets of one broker for one test (see the module docstring)."""

    new: Callable[[], Target]
    restart: Callable[[], None] | None = None


Placer = Callable[[pytest.FixtureRequest, Path, Server], Place]


@dataclass(frozen=True)
class TestBroker:
    __test__ = False  # not a test class, whatever its name

    name: str  # the entry's, in test ids; the registry's adapter unless ``adapter`` says
    placer: Placer
    embedded: bool  # no server: no socket, the unit tier runs on it
    shared: bool  # several processes can use one (worker subprocesses)
    clocks: tuple[str, ...] = ("fake",)  # "fake": a FakeClock; "real": the real clock
    marks: tuple[pytest.MarkDecorator, ...] = ()
    adapter: str = ""  # the registry's adapter, when not ``name``
    integration: bool = True  # the integration tier runs on it (see the module docstring)
    workers: bool = True  # the worker torture tests run on it (see the module docstring)

    @property
    def adapter_name(self) -> str:
        return self.adapter or self.name

    def place(self, request: pytest.FixtureRequest, root: Path, server: Server = "shared") -> Place:
        return self.placer(request, root, server)

    def target(
        self, request: pytest.FixtureRequest, root: Path, server: Server = "shared"
    ) -> Target:
        """One fresh target (most tests need one)."""
        return self.place(request, root, server).new()


def _memory(request: pytest.FixtureRequest, root: Path, server: Server) -> Place:
    return Place(lambda: Target("memory://"))


def _sqlite(request: pytest.FixtureRequest, root: Path, server: Server) -> Place:
    files = itertools.count()

    def new() -> Target:  # jobs.db in the test's folder first, then jobs1.db, ...
        n = next(files)
        return Target(f"sqlite:///{root / ('jobs%s.db' % (n or ''))}")

    return Place(new)


_REDIS_SERVERS = {
    "shared": "redis_server",
    "fresh": "fresh_redis_server",
    "durable": "aof_redis_server",
}


def _redis(request: pytest.FixtureRequest, root: Path, server: Server) -> Place:
    found = request.getfixturevalue(_REDIS_SERVERS[server])
    restart = None if server == "shared" else found.restart
    return Place(lambda: Target(found.url, unique_prefix()), restart)


def _redis_cluster(request: pytest.FixtureRequest, root: Path, server: Server) -> Place:
    """The session's cluster with a prefix of the test's own ("shared", "fresh": nothing in
    the suite restarts a "fresh" one), else a cluster of the test's own whose nodes fsync
    every write ("durable"), whose ``restart`` kills and starts again the master of the
    last prefix given out (no failover: it is back within the node timeout)."""
    if server == "durable":
        found = request.getfixturevalue("aof_redis_cluster")
        prefixes: list[str] = []

        def new() -> Target:
            prefixes.append(unique_prefix())
            return Target(found.url, prefixes[-1])

        def restart() -> None:  # the master of the target given out last
            found.restart_master_of(prefixes[-1])

        return Place(new, restart)
    shared = request.getfixturevalue("redis_cluster")
    return Place(lambda: Target(shared.url, unique_prefix()))


def _sharded(place: Placer, shards: int) -> Placer:
    """The targets of ``place`` with ``?shards=`` (one prefix over ``shards`` shards)."""

    def placer(request: pytest.FixtureRequest, root: Path, server: Server) -> Place:
        found = place(request, root, server)

        def new() -> Target:
            t = found.new()
            sep = "&" if "?" in t.url else "?"
            return Target(f"{t.url}{sep}shards={shards}", t.prefix, t.store)

        return Place(new, found.restart)

    return placer


def _postgres(request: pytest.FixtureRequest, root: Path, server: Server) -> Place:
    """A schema of its own per target (a migration: ~40 ms): in the session's database on
    the machine's server ("shared"), else on a private server ("fresh"; "durable": every
    commit is synced, PostgreSQL's default, a worker's claims and finishes too:
    ``worker_commit=sync``), which ``restart`` stops as a crash would. (A crash may undo
    async claims and finishes, whose jobs then run again: ``test_postgres_restart``.)"""
    if server == "shared":
        database: str = request.getfixturevalue("postgres_url")
        return Place(lambda: Target(schema_url(database)))
    found = request.getfixturevalue("private_postgres")

    def restart() -> None:
        found.stop("immediate")
        found.start()

    url = f"{found.url}?worker_commit=sync" if server == "durable" else found.url
    return Place(lambda: Target(schema_url(url)), restart)


def _rabbitmq(store: Placer) -> Placer:
    """RabbitMQ (the session's virtual host and queues) over a record store placed by
    ``store``, a key prefix per target; ``restart`` restarts the store (RabbitMQ is the
    machine's). The targets share the queues (a quorum queue is a Raft log of its own:
    hundreds a session would load the server); a ticket left by an earlier target names a
    job its store does not know, which a look acknowledges."""

    def place(request: pytest.FixtureRequest, root: Path, server: Server) -> Place:
        amqp: str = request.getfixturevalue("rabbitmq_url")
        records = store(request, root, server)

        def new() -> Target:
            found = records.new()
            prefix = found.prefix if found.prefix != "conveyor" else unique_prefix()
            return Target(f"{amqp}?queues=tests", prefix, found.url)

        return Place(new, records.restart)

    return place


_NEEDS_REDIS = (
    pytest.mark.redis,
    pytest.mark.skipif(SERVER_BINARY is None, reason="no redis-server binary"),
)

BROKERS: tuple[TestBroker, ...] = (
    TestBroker("memory", _memory, embedded=True, shared=False),
    TestBroker("sqlite", _sqlite, embedded=True, shared=True),
    TestBroker("redis", _redis, embedded=False, shared=True, clocks=("fake", "real"),
               marks=_NEEDS_REDIS),
    TestBroker("redis-cluster", _redis_cluster, embedded=False, shared=True, adapter="redis",
               clocks=("fake", "real"),
               integration=False,
               marks=(*_NEEDS_REDIS, pytest.mark.skipif(CLI_BINARY is None,
                                                        reason="no redis-cli binary"))),
    TestBroker("redis-sharded", _sharded(_redis, 3), embedded=False, shared=True,
               adapter="redis", clocks=("fake", "real"), integration=False, workers=False,
               marks=_NEEDS_REDIS),
    TestBroker("redis-cluster-sharded", _sharded(_redis_cluster, 6), embedded=False,
               shared=True, adapter="redis", clocks=("fake", "real"), integration=False,
               marks=(*_NEEDS_REDIS, pytest.mark.skipif(CLI_BINARY is None,
                                                        reason="no redis-cli binary"))),
    TestBroker("postgres", _postgres, embedded=False, shared=True, clocks=("fake", "real"),
               marks=(pytest.mark.postgres,)),
    TestBroker("rabbitmq-redis", _rabbitmq(_redis), adapter="rabbitmq",
               embedded=False, shared=True,
               clocks=("fake", "real"), marks=(pytest.mark.rabbitmq, *_NEEDS_REDIS)),
    TestBroker("rabbitmq-sqlite", _rabbitmq(_sqlite), adapter="rabbitmq",
               embedded=False, shared=False,
               marks=(pytest.mark.rabbitmq,)),
    TestBroker("rabbitmq-postgres", _rabbitmq(_postgres), adapter="rabbitmq",
               embedded=False, shared=False,
               marks=(pytest.mark.rabbitmq, pytest.mark.postgres)),
)  # fmt: skip


def select(
    *,
    embedded: bool | None = None,
    shared: bool | None = None,
    integration: bool | None = None,
    workers: bool | None = None,
) -> list[TestBroker]:
    return [
        b
        for b in BROKERS
        if (embedded is None or b.embedded == embedded)
        and (shared is None or b.shared == shared)
        and (integration is None or b.integration == integration)
        and (workers is None or b.workers == workers)
    ]


def params(
    *,
    embedded: bool | None = None,
    shared: bool | None = None,
    integration: bool | None = None,
    workers: bool | None = None,
) -> Sequence[Any]:
    """The selected brokers as pytest params (ids: their names, marks: theirs)."""
    chosen = select(embedded=embedded, shared=shared, integration=integration, workers=workers)
    return [pytest.param(b, id=b.name, marks=b.marks) for b in chosen]


def by_name(name: str) -> TestBroker:
    return next(b for b in BROKERS if b.name == name)
