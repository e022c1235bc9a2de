"""Which adapter opens a broker URL: one registry by URL scheme, open to other packages.

An adapter is known by an ``Adapter``: the URL schemes it opens, where its ``Broker``
subclass is (``"module:Class"``, imported only when it is loaded), a URL of its form for
messages, and, optionally, a check that reads a whole URL without importing the adapter
(``"module:function"``; it raises ``InvalidURL``), so a bad URL fails where the app is
made. ``Broker.from_url(url, BrokerOptions)`` opens one.

The adapters of this package are ``BUILTIN``, a line each. Another package adds one through
the entry-point group ``conveyor.brokers``: each entry is named by a URL scheme, and its
value is the ``Adapter`` (one entry per scheme)::

    [project.entry-points."conveyor.brokers"]
    postgresql = "conveyor_postgres:ADAPTER"

A built-in scheme never looks at the entry points (no scan of installed packages on the way
to open one), and an entry named by a built-in scheme is ignored: installing a package
cannot change what ``redis://`` opens. An entry point is loaded only when its scheme is
asked for.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, InvalidURL
from ._url import CLUSTER_SCHEMES, REDIS_SCHEMES, SCHEME_NAME, redact_url

if TYPE_CHECKING:
    from ._port import Broker

log = logging.getLogger("conveyor")

GROUP = "conveyor.brokers"  # the entry-point group of other packages' adapters


@dataclass(frozen=True)
class Adapter:
    """A broker adapter as the registry knows it (see the module docstring)."""

    name: str
    schemes: tuple[str, ...]
    broker: str  # "module:Class", a Broker subclass
    example: str  # a URL of its form, as messages show it
    check: str | None = None  # "module:function" reading a URL whole; raises InvalidURL
    store: bool = False  # delivers only: its records are in a record store (``store=``)

    def load(self) -> type[Broker]:
        """The adapter's ``Broker`` subclass (imports its module: its client library)."""
        found = _attribute(self.broker)
        from ._port import Broker

        if not (isinstance(found, type) and issubclass(found, Broker)):
            raise ConfigurationError(
                f"the {self.name} broker adapter names {self.broker}, which is not a "
                "conveyor.brokers.Broker subclass"
            )
        return found

    def check_url(self, url: str) -> None:
        """Read the URL whole (without opening anything); ``InvalidURL`` says what is wrong."""
        if self.check is not None:
            _attribute(self.check)(url)


BUILTIN = (
    Adapter("memory", ("memory",), "conveyor.brokers.memory:MemoryBroker", "memory://"),
    Adapter(
        "sqlite", ("sqlite",), "conveyor.brokers.sqlite:SQLiteBroker", "sqlite:///path/to/jobs.db"
    ),
    Adapter(
        "redis",
        (*REDIS_SCHEMES, *CLUSTER_SCHEMES),
        "conveyor.brokers.redis:RedisBroker",
        "redis://host:6379/0",
        check="conveyor.brokers._url:parse_redis_url",
    ),
    Adapter(
        "postgres",
        ("postgresql", "postgres"),
        "conveyor.brokers.postgres:PostgresBroker",
        "postgresql://user:password@host:5432/dbname",
        check="conveyor.brokers.postgres._url:parse_postgres_url",
    ),
    Adapter(
        "rabbitmq",
        ("amqp", "amqps"),
        "conveyor.brokers.rabbitmq:RabbitBroker",
        "amqp://user:password@host:5672/vhost",
        check="conveyor.brokers.rabbitmq._url:parse_amqp_url",
        store=True,
    ),
)
_BY_SCHEME = {scheme: adapter for adapter in BUILTIN for scheme in adapter.schemes}


def _attribute(where: str) -> Any:
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


def _entry_points() -> dict[str, Any]:
    """The entry points of the group, by scheme; built-in schemes left out."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=GROUP) if ep.name not in _BY_SCHEME}


def _installed(scheme: str) -> Adapter | None:
    """The adapter another package registered for ``scheme``; None if none."""
    entry = _entry_points().get(scheme)
    if entry is None:
        return None
    adapter = entry.load()
    if not isinstance(adapter, Adapter) or scheme not in adapter.schemes:
        raise ConfigurationError(
            f"the {GROUP} entry point {scheme!r} ({entry.value}) is not a "
            f"conveyor.brokers.Adapter for the scheme {scheme!r}: fix or uninstall the "
            "package that declares it"
        )
    return adapter


def schemes() -> list[str]:
    """Every scheme a URL may have here: the built-in ones, then the installed ones."""
    return [*_BY_SCHEME, *sorted(_entry_points())]


def _usage() -> str:
    *first, last = [a.example for a in BUILTIN]
    return f"use {', '.join(first)} or {last}"


def find(url: str) -> tuple[str, Adapter]:
    """The URL's scheme (lowercase) and the adapter that opens it, or ``InvalidURL`` saying
    what to write instead."""
    if not isinstance(url, str):
        raise InvalidURL(f"the broker URL must be a str, not {type(url).__name__}: {_usage()}")
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise InvalidURL(f"bad broker URL {redact_url(url)!r}: {_usage()}")
    scheme = scheme.lower()
    adapter = _BY_SCHEME.get(scheme)
    if adapter is None and SCHEME_NAME.fullmatch(scheme):
        adapter = _installed(scheme)
    if adapter is None:
        shown = repr(scheme) if SCHEME_NAME.fullmatch(scheme) else "(not a scheme name)"
        known = [f"{s}://" for s in schemes()]
        raise InvalidURL(
            f"unknown broker scheme {shown} in {redact_url(url)!r}: use "
            f"{', '.join(known[:-1])} or {known[-1]} (another broker's package adds its "
            f"scheme through the {GROUP} entry points)"
        )
    return scheme, adapter
