"""``app.store``: a small key-value store on the broker, with optimistic transactions.

Keys live under ``store:`` in the key-value port, apart from the keys locks, the cache and
the scheduler use, so nothing written here can break a lock or a fencing counter. Values go
through the app's codec, except integers: they are kept as plain decimal, the format the
port's atomic ``incr`` counts in, so ``set(k, 5)``, ``incr(k)`` and ``update(k, fn)`` all
work on the same counter. (With a signing secret, a counter is therefore the one value that
is not signed: an integer cannot run code, and the broker's ``incr`` could not sign it.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, InvalidName, TransactionConflict, ValidationError
from ._port import MAX_KEY, KeyValue, NotACounter, check_key

if TYPE_CHECKING:
    from .._codec import Codec

__all__ = ["Store"]

_PREFIX = "store:"
_INTEGER = re.compile(rb"-?[0-9]+")
# The longest TTL the store, locks and the cache take: ten years (315,360,000 s). Longer is
# "never" in practice, and more likely a unit mistake (ms for s) than a wish.
MAX_TTL = 10 * 365 * 86400


def _check_ttl(ttl: float | None) -> float | None:
    if ttl is None:
        return None
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not 0 < ttl <= MAX_TTL
    ):
        raise ConfigurationError(
            f"ttl must be a positive number of seconds up to {MAX_TTL} (ten years), or None "
            f"for no expiry; got {ttl!r}"
        )
    return float(ttl)


class Store:
    """get, set with a TTL, delete, incr, ttl and ``update`` (an optimistic transaction).

    Every call is one atomic step on the broker. Values are anything the app's codec
    encodes (JSON-compatible by default).
    """

    def __init__(self, kv: KeyValue, codec: Codec) -> None:
        self._kv = kv
        self._codec = codec

    def __repr__(self) -> str:
        return f"<Store on {type(self._kv).__name__}>"

    # -- values ----------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``, or ``default`` if it is absent or expired."""
        raw = self._kv.get(self._key(key))
        return default if raw is None else self._decode(raw)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value``; it expires after ``ttl`` seconds (None: never)."""
        self._kv.set(self._key(key), self._encode(value), _check_ttl(ttl))

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""
        return self._kv.delete(self._key(key))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to the counter at ``key`` (absent counts as 0) and return the new
        value. ``ttl`` applies only when this call creates the counter."""
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise ValidationError(f"incr amount must be an int, got {amount!r}")
        try:
            return self._kv.incr(self._key(key), amount, _check_ttl(ttl))
        except NotACounter:  # named as the adapter knows it, with the store's prefix
            raise NotACounter(key) from None

    def ttl(self, key: str) -> float | None:
        """Seconds before ``key`` expires; None if it has no expiry *or* does not exist."""
        return self._kv.ttl(self._key(key))

    # -- transactions ----------------------------------------------------------------------

    def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        ttl: float | None = None,
        *,
        retries: int = 50,
    ) -> Any:
        """Read-modify-write ``key`` as one optimistic transaction; return the new value.

        ``fn`` gets the current value (None if absent) and returns the new one; returning
        None deletes the key. If another writer changes the key between the read and the
        write, nothing is written and ``fn`` runs again on the newer value: it may run
        several times, so it must be pure (no side effects, same answer for the same input).
        The written value expires after ``ttl`` seconds (None: never, even if the old value
        had an expiry). Raises ``TransactionConflict`` after ``retries`` conflicts.
        """
        full = self._key(key)
        ttl = _check_ttl(ttl)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValidationError(
                f"store.update retries= takes a whole number of 0 or more (how many times a "
                f"conflicting write is tried again), got {retries!r}"
            )
        last: list[Any] = [None]

        def step(old: bytes | None) -> bytes | None:
            new = fn(None if old is None else self._decode(old))
            last[0] = new
            return None if new is None else self._encode(new)

        try:
            self._kv.update(full, step, ttl, retries)
        except TransactionConflict as exc:
            raise TransactionConflict(
                f"store.update({key!r}) kept conflicting with other writers and gave up "
                f"after {retries} retries: retry later, pass a larger retries=, spread the "
                f"writes over several keys, or use store.incr for a counter ({exc})"
            ) from exc
        return last[0]

    # -- encoding --------------------------------------------------------------------------

    @staticmethod
    def _key(key: str) -> str:
        check_key(key)
        try:
            return check_key(_PREFIX + key)
        except InvalidName:
            raise InvalidName(
                f"store key {key[:40]!r}... is {len(key)} characters long: use at most "
                f"{MAX_KEY - len(_PREFIX)} (the broker's {MAX_KEY} include the store's "
                f"{_PREFIX!r} namespace)"
            ) from None

    def _encode(self, value: Any) -> bytes:
        if type(value) is int:  # not bool, not an IntEnum: those round-trip through the codec
            return str(value).encode()
        return self._codec.encode_value(value)

    def _decode(self, raw: bytes) -> Any:
        if _INTEGER.fullmatch(raw):
            return int(raw)
        return self._codec.decode_value(raw)
