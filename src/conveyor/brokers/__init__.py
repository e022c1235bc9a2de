"""Brokers: the port every adapter implements, and the URL factory that opens them.

``open_broker(url)`` finds the adapter of the URL's scheme in the registry (``_registry``:
the built-in adapters, and those other packages declare as ``conveyor.brokers`` entry
points) and opens it; the names an adapter is written with are exported here
(docs/adding-a-broker.md). This package and ``cli`` are the only places that name a
concrete adapter.
"""

from __future__ import annotations

from .._clock import Clock, SystemClock
from .._errors import ConfigurationError, InvalidURL
from .._message import Delivery, Envelope, JobEntry, JobRecord, JobStatus, QueueStats, WorkerInfo
from ._admin import Events
from ._base import (
    CANCELLED_PENDING,
    CANCELLED_TTL,
    CANCELLED_WORKER_STOPPED,
    EVENTS_KEPT,
    EVENTS_SLACK,
    PARKED,
    REQUEUEABLE,
    AsyncWatch,
    BrokerOptions,
    Watch,
    unknown_dependency,
)
from ._port import Broker, Claimed, Finish, LeaseState
from ._registry import Adapter, find
from ._url import redact_url

__all__ = [
    "CANCELLED_PENDING",
    "CANCELLED_TTL",
    "CANCELLED_WORKER_STOPPED",
    "DEFAULT_URL",
    "EVENTS_KEPT",
    "EVENTS_SLACK",
    "PARKED",
    "REQUEUEABLE",
    "Adapter",
    "AsyncWatch",
    "Broker",
    "BrokerOptions",
    "Claimed",
    "Delivery",
    "Envelope",
    "Events",
    "Finish",
    "JobEntry",
    "JobRecord",
    "JobStatus",
    "LeaseState",
    "QueueStats",
    "Watch",
    "WorkerInfo",
    "check_url",
    "load_adapter",
    "open_broker",
    "record_store",
    "redact_url",
    "unknown_dependency",
]

DEFAULT_URL = "sqlite:///./conveyor.db"


def check_url(url: str) -> str:
    """The URL's scheme, or ``InvalidURL`` saying what to write instead. The URL is read
    whole where its adapter can (Redis: hosts, ports, database, options), so a bad one fails
    where the app is made; no message shows a password (see ``_url``)."""
    scheme, adapter = find(url)
    _checked(adapter, url)
    return scheme


def _checked(adapter: Adapter, url: str) -> None:
    """The adapter's own check of ``url``, its message redacted: a third party's check may
    quote the URL whole, password and all."""
    try:
        adapter.check_url(url)
    except InvalidURL as exc:
        raise InvalidURL(str(exc).replace(url, redact_url(url))) from None


def load_adapter(url: str) -> None:
    """Import the adapter a URL names, without opening anything: an app made at import time
    pays for its client library there (redis-py takes ~55 ms to import), not in its first
    job, and a missing one fails where the app is made."""
    check_url(url)
    find(url)[1].load()


def record_store(url: str, store: str | None, from_environment: str | None = None) -> str | None:
    """The URL of the record store a broker URL is opened with: ``store``, else
    ``from_environment`` (``CONVEYOR_STORE_URL``), for a broker that keeps its records in
    another (``amqp://``); None for the others. ``ConfigurationError`` when such a broker
    has none, or when ``store`` is given to a broker that keeps its own."""
    _, adapter = find(url)
    if not adapter.store:
        if store:
            raise ConfigurationError(
                f"store= is for a broker that keeps its records in another (amqp://); "
                f"{redact_url(url)} keeps its own: leave store= out"
            )
        return None
    chosen = store or from_environment
    if not chosen:
        raise ConfigurationError(
            f"{redact_url(url)} needs a record store beside it (its jobs' records, results, "
            "locks and events are kept in Redis, PostgreSQL or SQLite): give one as "
            f'Conveyor("{adapter.example}", store="redis://host:6379/0"), or set '
            "CONVEYOR_STORE_URL=redis://host:6379/0 beside CONVEYOR_URL (docs/rabbitmq.md)"
        )
    if find(chosen)[1].store or check_url(chosen) == "memory":
        raise ConfigurationError(
            f"the record store {redact_url(chosen)} of {redact_url(url)} must be Redis, "
            "PostgreSQL or SQLite (one every worker and producer shares)"
        )
    return chosen


def open_broker(
    url: str,
    *,
    clock: Clock | None = None,
    prefix: str | None = None,
    create: bool = True,
    events_kept: int | None = None,
    store: str | None = None,
) -> Broker:
    """Open the broker a URL names; ``prefix``: the key prefix (Redis: else the URL's
    ``?prefix=``, else ``conveyor``); ``events_kept``: how many events its log keeps
    (``EVENTS_KEPT`` by default).

    ``memory://`` (one process), ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``,
    ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS), ``unix:///path.sock``,
    ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``
    ``redis+cluster://[user:password@]host:port[,host:port...]`` (seed nodes of a Redis
    Cluster; ``rediss+cluster://``: TLS; docs/cluster.md). docs/redis.md lists the options.
    ``postgresql://[user:password@]host:5432/dbname[?schema=conveyor]`` (or ``postgres://``;
    docs/postgres.md). ``amqp://user:password@host:5672/vhost`` (or ``amqps://``) with
    ``store``, the URL of its record store (docs/rabbitmq.md).

    ``create=False`` is for tools that only look: an SQLite file that does not exist (or
    holds no Conveyor tables) raises ``ConfigurationError`` naming the path, and nothing is
    created, neither the file nor its folder; a PostgreSQL schema without Conveyor's tables
    likewise (no migration runs). Redis has nothing to create.
    """
    _, adapter = find(url)
    _checked(adapter, url)
    kept = EVENTS_KEPT if events_kept is None else events_kept
    store = record_store(url, store)
    options = BrokerOptions(clock or SystemClock(), prefix, create, kept, store)
    try:
        return adapter.load().from_url(url, options)
    except InvalidURL as exc:  # a message that quotes the URL: show it redacted
        raise InvalidURL(str(exc).replace(url, redact_url(url))) from None
