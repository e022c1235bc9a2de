"""The one boundary where ``redis.*`` errors become Conveyor errors: ``TRANSLATE``, the
Redis broker's ``_errors`` (every primitive runs inside it, see ``brokers._base``), and the
key-value store's.

A refused login or a missing ACL permission is ``BrokerAuthError``: retrying cannot help,
so neither redis-py's retry (``_connect._Retry``) nor the worker's retries it. Nor can it
help a database number past the server's ``databases``: a ``ConfigurationError`` (the URL
is wrong), on which a worker stops too. A write refused because Redis is full, or by a
read-only replica, says so and what to do. A server that cannot be reached, or is loading
its dataset, is ``BrokerUnavailable``; anything else ``BrokerError`` with Redis's words.
"""

from __future__ import annotations

from types import TracebackType

import redis
import redis.exceptions

from ..._errors import BrokerAuthError, BrokerError, BrokerUnavailable, ConfigurationError

# A full Redis refuses even the BLMOVE a waiter sleeps in (it may take memory): the waiter
# reads the record this often instead, until Redis has room again.
FULL_POLL = 0.2

# Socket-level errors redis-py sometimes lets through unwrapped (asyncio timeouts, resets).
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, TimeoutError, ConnectionError)
# Redis's words for a login it never got, and for a missing ACL permission (a command
# refused inside a script comes back as a plain ERR).
_NO_LOGIN = ("authentication required", "must be called with the client already authenticated")
_NOT_PERMITTED = ("noperm", "no permissions", "the user executing the script can't")
_GRANT = (
    "grant it the commands and keys docs/redis.md lists "
    "(ACL SETUSER NAME on >PASSWORD ~{PREFIX}:* ~{PREFIX:* +@all -@dangerous +info)"
)


def refusal(exc: BaseException) -> BrokerAuthError | None:
    """The credentials or the ACL user's rights were refused (retrying cannot help), else
    None. Redis's messages never hold the password; neither do ours."""
    import redis.sentinel  # only a sentinel URL's errors need it loaded

    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return BrokerAuthError(
            "Redis refused the login: the server has no ACL users (Redis before 6); "
            "give only the password, redis://:PASSWORD@host:6379/0"
        )
    if isinstance(exc, redis.AuthenticationError):
        if any(words in lowered for words in _NO_LOGIN):
            return BrokerAuthError(
                "Redis needs a password and the broker URL gives none: write "
                "redis://:PASSWORD@host:6379/0 (requirepass) or "
                "redis://USER:PASSWORD@host:6379/0 (an ACL user)"
            )
        return BrokerAuthError(
            f"Redis refused the login ({text}): check the user name and password in the "
            "broker URL (percent-encode @ : / ? # % in them), and that the ACL user exists "
            "and is on (ACL SETUSER NAME on)"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError) and any(w in lowered for w in _NOT_PERMITTED)
    ):
        return BrokerAuthError(
            f"the Redis ACL user may not run a command or use a key Conveyor needs ({text}); "
            + _GRANT
        )
    if isinstance(exc, redis.sentinel.MasterNotFoundError) and "AuthenticationError" in text:
        return BrokerAuthError(
            "the sentinels refused the login: give their own password in the broker URL "
            "as ?sentinel_password=PASSWORD (and ?sentinel_username=USER for an ACL user)"
        )
    return None


# Redis's words for a write refused because it is full (maxmemory reached, noeviction);
# Redis 6.2 wraps them in its script error, and redis-py drops the OOM code of Redis 7's.
_FULL = "used memory > 'maxmemory'"
FULL = (
    "Redis is full (its used memory is over maxmemory, and maxmemory-policy noeviction "
    "refuses what would take more): nothing was written. Workers still fetch and finish the "
    "jobs it holds, which frees memory: enqueue again later, or give Redis more memory "
    "(maxmemory), keep results for less time (result_ttl=) or purge a queue you do not need "
    "(docs/redis.md)"
)


def full(exc: BaseException) -> bool:
    """Redis refused a command because it is full (maxmemory reached, noeviction)."""
    return _FULL in str(exc)


# Redis's words for a write refused by a replica (Redis 6.2 wraps them in its script error;
# before Redis 5 they end in "slave").
_READ_ONLY = ("can't write against a read only",)


def replica(master: str | None = None) -> str:
    """What to do about a read-only replica (of ``master``, ``host:port``, when known)."""
    of = f" of {master}" if master else ""
    return (
        f"this Redis is a read-only replica{of}: point the URL at the master, or use "
        "redis+sentinel:// (the sentinels name the current master); every enqueue and fetch "
        "fails on a replica, see docs/redis.md"
    )


# Redis's words for a SELECT of a database number past its ``databases`` setting.
_OUT_OF_RANGE = "DB index is out of range"


class DatabaseOutOfRange(redis.ResponseError):
    """The handshake's SELECT refused the URL's database number (``_connect._handshake``
    raises it with the number; elsewhere Redis's own error arrives, without it)."""

    def __init__(self, db: int) -> None:
        super().__init__(_OUT_OF_RANGE)
        self.db = db


def out_of_range(exc: BaseException) -> bool:
    """Redis refused the URL's database number."""
    return _OUT_OF_RANGE in str(exc)


def _out_of_range(exc: BaseException) -> ConfigurationError:
    db = exc.db if isinstance(exc, DatabaseOutOfRange) else None
    which = f"database {db}" if db is not None else "the database number"
    return ConfigurationError(
        f"{which} in the URL is not below the server's `databases` setting: use a number "
        "below it (/0 to /15 with the default 16)"
    )


LOADING = (
    "Redis is loading its dataset into memory (it has just started, or a replica is "
    "syncing) and refuses commands until it is done: wait, then try again (workers wait "
    "and go on by themselves)"
)


class SlotMigrating(redis.ConnectionError):
    """The Redis Cluster slot of the prefix is being migrated to another master (resharding);
    a ``ConnectionError``, so redis-py's retry sends the call again a few times first."""


# Redis Cluster: the prefix's slot is being resharded (``_cluster.SlotMigrating``), or a
# script met a key another node holds (a migration begun under a call that declared no
# guard); Redis's words for the latter.
_NOT_LOCAL = ("non local key", "do not hash to the same slot")
MIGRATING = (
    "the Redis Cluster slot that holds this prefix's keys is being migrated to another "
    "master ({}): Conveyor refuses to work on it until the migration ends (a script could "
    "otherwise find half of a job moved), then follows the slot. Reshard this slot only "
    "while the prefix's producers and workers are stopped, see docs/cluster.md"
)


def _convert(exc: BaseException) -> BrokerError | ConfigurationError:
    if isinstance(exc, redis.exceptions.RedisClusterException):  # redis-py's cluster client
        cause = exc.__cause__
        if isinstance(cause, redis.RedisError):  # what a node answered: a refused login...
            return _convert(cause)
        return BrokerUnavailable(
            f"cannot reach the Redis Cluster ({exc}); check the URL's seed nodes, the network "
            "and that the nodes run"
        )
    refused = refusal(exc)
    if refused is not None:
        return refused
    if full(exc):
        return BrokerError(FULL)
    text = str(exc)
    if out_of_range(exc):
        return _out_of_range(exc)
    if isinstance(exc, redis.ReadOnlyError) or any(w in text for w in _READ_ONLY):
        return BrokerError(replica())
    if isinstance(exc, redis.BusyLoadingError):
        return BrokerUnavailable(LOADING)
    if isinstance(exc, SlotMigrating):
        return BrokerUnavailable(MIGRATING.format(exc))
    if any(words in str(exc) for words in _NOT_LOCAL):
        return BrokerUnavailable(MIGRATING.format(exc))
    if isinstance(exc, _UNAVAILABLE):
        return BrokerUnavailable(
            f"cannot reach Redis ({exc}); check the URL, the network and that the server runs"
        )
    return BrokerError(f"Redis failed: {exc}")


_TRANSLATED = (redis.RedisError, redis.exceptions.RedisClusterException, *_UNAVAILABLE)


def describe(exc: BaseException) -> str:
    """What the user is told of ``exc``: a redis error in the words it would reach them in."""
    return str(_convert(exc)) if isinstance(exc, _TRANSLATED) else str(exc)


class _Translate:
    """Nothing from redis leaves the adapter: its errors become ``BrokerError`` (``with``
    and ``async with``; one object serves every thread: it keeps no state)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, _TRANSLATED):
            raise _convert(exc) from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, exc, tb)


TRANSLATE = _Translate()
