"""The key-value port: a narrow set of primitives that results' neighbours build on.

Locks, the cache, ``app.store``, rate limits, unique keys and cron de-duplication are all
built from these few operations, so every broker offers all of them by implementing this.

Values are opaque bytes (the app's codec encodes them). Keys are validated by ``check_key``.
Expiry is in seconds (float); ``None`` means no expiry. Every operation is atomic.
Locks live in a namespace of their own: no ``get``/``set``/``delete`` of any key can reach a
lock or its fencing counter.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection

from .._backoff import RANDOM
from .._errors import InvalidName, TransactionConflict, ValidationError

MAX_KEY = 512  # characters in a key
# (\Z, not $: $ also matches before a last newline. No lone surrogate: no broker can
# store one.)
_KEY = re.compile(rf"[^\x00-\x1f\x7f\ud800-\udfff]{{1,{MAX_KEY}}}\Z")
_COUNTER = re.compile(rb"[+-]?[0-9]+\Z")

Updater = Callable[[bytes | None], bytes | None]
# What an optimistic ``update`` reads: the live value (None: absent or expired) and the
# row's version (None: no row at all).
Versioned = tuple[bytes | None, int | None]


def versioned_update(
    key: str,
    fn: Updater,
    retries: int,
    read: Callable[[], Versioned],
    write: Callable[[int | None, bytes | None], bool],
) -> bytes | None:
    """``update`` on a store of versioned rows (SQLite, PostgreSQL): ``read``, ``fn`` outside
    any transaction, then ``write(seen_version, new)``, a compare-and-set that is False when
    someone wrote in between; at most ``retries + 1`` attempts."""
    for attempt in range(retries + 1):
        value, seen = read()
        new = fn(value)
        if write(seen, new):
            return new
        # Jittered backoff so that writers which collided do not collide again in step.
        time.sleep(RANDOM.uniform(0, 0.0005 * min(attempt + 1, 20)))
    raise TransactionConflict(
        f"store.update({key!r}) conflicted with other writers {retries + 1} times: "
        "write this key less often from many places, or pass a larger retries="
    )


def check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidName(
            f"bad key {key!r}: use 1-{MAX_KEY} printable characters (no control characters, "
            "no lone surrogates)"
        )
    return key


class NotACounter(ValidationError):
    """``incr`` of a key whose value is not an integer (``key`` as the adapter knows it)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"store key {key!r} holds a value that is not an integer, so incr cannot add to "
            "it; delete it or use another key for the counter"
        )
        self.key = key


def parse_counter(key: str, raw: bytes | None) -> int:
    """The integer a counter key holds (absent is 0), read the same way on every adapter."""
    if raw is None:
        return 0
    if not _COUNTER.match(raw):
        raise NotACounter(key)
    return int(raw)


class KeyValue(ABC):
    def check_text(self, text: str, what: str) -> str:
        """``text`` (part of a key: ``what`` names it, e.g. "rate key") if this store can
        hold its characters, else ``InvalidName``, before anything is written. Every store
        holds any text but the PostgreSQL one on a database not in UTF8."""
        return text

    async def check_texts_async(self, texts: Collection[str], what: str) -> None:
        """``check_text`` for each of ``texts``, for asyncio code: a store that would ask its
        server does so off the event loop."""
        for text in texts:
            self.check_text(text, what)

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value, or None if absent or expired."""

    @abstractmethod
    def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        """Store a value; with ``nx`` only if the key is absent. True if written."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove a key; True if it existed."""

    @abstractmethod
    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add to an integer counter (absent counts as 0); ``ttl`` applies when it is created."""

    @abstractmethod
    def ttl(self, key: str) -> float | None:
        """Seconds left before the key expires; None if it has no expiry or does not exist."""

    @abstractmethod
    def update(
        self, key: str, fn: Updater, ttl: float | None = None, retries: int = 50
    ) -> bytes | None:
        """Optimistic transaction: read, ``fn(old) -> new``, write only if nobody wrote in
        between, else retry: at most ``retries + 1`` attempts, then ``TransactionConflict``.
        ``new`` None
        deletes the key. ``fn`` may run more than once. Returns the value written."""

    @abstractmethod
    def lock_acquire(self, name: str, token: str, ttl: float) -> int | None:
        """Take the lock if free: store ``token`` with ``ttl`` and return a fencing token that
        grows on every grant of this name. None if someone else holds it."""

    @abstractmethod
    def lock_release(self, name: str, token: str) -> bool:
        """Release only if ``token`` still holds the lock; False if it was lost."""

    @abstractmethod
    def lock_extend(self, name: str, token: str, ttl: float) -> bool:
        """Reset the TTL only if ``token`` still holds the lock; False if it was lost."""
