"""Brokers and the URL factory: the one place (besides the CLI) that names a concrete adapter."""

from __future__ import annotations

from .._clock import Clock, SystemClock
from .._errors import InvalidURL
from ._port import EVENTS_KEPT, Broker, Finish, LeaseState
from ._url import REDIS_SCHEMES, SCHEME_NAME, parse_redis_url, redact_url
from .postgres._url import SCHEMES as POSTGRES_SCHEMES
from .postgres._url import parse_postgres_url

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


def check_url(url: str) -> str:
    """The URL's scheme, or ``InvalidURL`` saying what to write instead. A Redis URL is
    read whole (hosts, ports, database, options), so a bad one fails where the app is
    made; no message shows a password (see ``_url``)."""
    if not isinstance(url, str):
        raise InvalidURL(
            f"the broker URL must be a str, not {type(url).__name__}: use memory://, "
            "sqlite:///path/to/jobs.db or redis://host:6379/0"
        )
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise InvalidURL(
            f"bad broker URL {redact_url(url)!r}: use memory://, sqlite:///path/to/jobs.db or "
            "redis://host:6379/0"
        )
    scheme = scheme.lower()
    if scheme == "redis+cluster" or scheme in REDIS_SCHEMES:
        parse_redis_url(url)
    elif scheme in POSTGRES_SCHEMES:
        parse_postgres_url(url)
    elif scheme not in ("memory", "sqlite"):
        shown = repr(scheme) if SCHEME_NAME.fullmatch(scheme) else "(not a scheme name)"
        raise InvalidURL(
            f"unknown broker scheme {shown} in {redact_url(url)!r}: use memory://, "
            "sqlite:///path.db, redis://, rediss://, unix://, redis+sentinel://, "
            "redis+cluster:// or postgresql://"
        )
    return scheme


def load_adapter(url: str) -> None:
    """Import the adapter a URL names, without opening anything: an app made at import time
    pays for its client library there (redis-py takes ~55 ms to import), not in its first
    job, and a missing one fails where the app is made."""
    scheme = check_url(url)
    if scheme in POSTGRES_SCHEMES:
        from .postgres import broker  # noqa: F401  (without psycopg: what to install)
    elif scheme not in ("memory", "sqlite"):
        from . import redis  # noqa: F401


def open_broker(
    url: str,
    *,
    clock: Clock | None = None,
    prefix: str = "conveyor",
    create: bool = True,
    events_kept: int | None = None,
) -> Broker:
    """Open the broker a URL names; ``events_kept``: how many events its log keeps
    (``EVENTS_KEPT`` by default).

    ``memory://`` (one process), ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``,
    ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS), ``unix:///path.sock``,
    ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``
    (``redis+cluster://`` is refused with a message). docs/redis.md lists the options.
    ``postgresql://[user:password@]host:5432/dbname[?schema=conveyor]`` (or ``postgres://``;
    docs/postgres.md).

    ``create=False`` is for tools that only look: an SQLite file that does not exist (or
    holds no Conveyor tables) raises ``ConfigurationError`` naming the path, and nothing is
    created, neither the file nor its folder; a PostgreSQL schema without Conveyor's tables
    likewise (no migration runs). Redis has nothing to create.
    """
    scheme = check_url(url)
    clock = clock or SystemClock()
    kept = EVENTS_KEPT if events_kept is None else events_kept
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(clock=clock, events_kept=kept)
    if scheme == "sqlite":
        from .sqlite import SQLiteBroker, sqlite_path

        try:
            path = sqlite_path(url)
        except InvalidURL as exc:  # its message quotes the URL: show it redacted
            raise InvalidURL(str(exc).replace(url, redact_url(url))) from None
        return SQLiteBroker(path, clock=clock, create=create, events_kept=kept)
    if scheme in POSTGRES_SCHEMES:
        from .postgres import PostgresBroker

        return PostgresBroker(url, clock=clock, create=create, events_kept=kept)
    from .redis import RedisBroker

    return RedisBroker(url, prefix=prefix, clock=clock, events_kept=kept)
