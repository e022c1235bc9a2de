"""Brokers and the URL factory: the one place (besides the CLI) that names a concrete adapter."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .._clock import Clock, SystemClock
from .._errors import InvalidURL
from ._port import Broker, Finish, LeaseState

__all__ = [
    "DEFAULT_URL",
    "Broker",
    "Finish",
    "LeaseState",
    "check_url",
    "open_broker",
    "redact_url",
]

DEFAULT_URL = "sqlite:///./conveyor.db"
_REDIS_SCHEMES = {"redis", "rediss", "unix", "redis+sentinel", "redis+cluster"}


def check_url(url: str) -> str:
    """The URL's scheme, or ``InvalidURL`` saying what to write instead."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidURL(
            f"bad broker URL {url!r}: use memory://, sqlite:///path/to/jobs.db or "
            "redis://host:6379/0"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _REDIS_SCHEMES | {"memory", "sqlite"}:
        raise InvalidURL(
            f"unknown broker scheme {scheme!r} in {url!r}: use memory://, sqlite:///path.db, "
            "redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
        )
    return scheme


def load_adapter(url: str) -> None:
    """Import the adapter a URL names, without opening anything: an app made at import time
    pays for its client library there (redis-py takes ~55 ms to import), not in its first
    job, and a missing one fails where the app is made."""
    scheme = check_url(url)
    if scheme in _REDIS_SCHEMES:
        from . import redis  # noqa: F401


def open_broker(url: str, *, clock: Clock | None = None, prefix: str = "conveyor") -> Broker:
    """Open the broker a URL names.

    ``memory://`` (one process), ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``,
    ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS), ``unix:///path.sock``,
    ``redis+sentinel://host:port/service_name``, ``redis+cluster://host:port``.
    """
    scheme = check_url(url)
    clock = clock or SystemClock()
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(clock=clock)
    if scheme == "sqlite":
        from .sqlite import SQLiteBroker, sqlite_path

        return SQLiteBroker(sqlite_path(url), clock=clock)
    from .redis import RedisBroker

    return RedisBroker(url, prefix=prefix, clock=clock)


def redact_url(url: str) -> str:
    """The URL with its password masked, for logs and tables."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
