"""``@app.cached(ttl=...)``: a cache in front of a slow source, on the key-value port.

A call's key is ``cache:<name>:<digest>``: the function's qualified name (or ``name=``) and a
SHA-256 of its arguments as the app's codec encodes them (after binding them to the
signature, so ``f(1)``, ``f(x=1)`` and a defaulted ``f()`` share an entry), or what the
``key=`` function returns for the arguments bound the same way. Values are stored through
the same codec as jobs, and a call returns them as the cache gives them back, on a miss as
on a hit.

Under a stampede (many callers missing the same key at once) one caller computes: it takes a
short lock on the key, renewed while it computes, and the others poll for the value with a
small backoff. If that computation ends without a value (the function raised, or its caller
died and its lock ran out after ``_COMPUTE_TTL`` seconds), the callers that waited for it
compute themselves, together rather than queued on the lock one after another. The cache is
not a source of truth: an entry may be evicted, expire or be invalidated at any time, and
``invalidate`` cannot stop a computation already under way from storing its (older) result
right after.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import math
import time
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._errors import ConfigurationError, SerializationError, ValidationError
from .locks import Lock, backoff
from .stores._port import MAX_KEY, KeyValue, check_key
from .stores._store import MAX_TTL

if TYPE_CHECKING:
    from ._codec import Codec

__all__ = ["Cached", "cached"]

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("conveyor.cache")

# The lock one caller holds while it computes a missing value; renewed while it runs, so
# this bounds only how long waiters wait for a caller that died mid-computation.
_COMPUTE_TTL = 5.0
_MISS: Any = object()
_DIGEST = 64  # hex characters of a SHA-256: the longest part a call adds to the prefix

# The cached functions alive in this process, by store and name: two different functions
# under one name would share entries and serve each other's results.
_NAMED: weakref.WeakValueDictionary[tuple[int, str], Cached[Any]] = weakref.WeakValueDictionary()


def cached(
    kv: KeyValue | Callable[[], KeyValue],
    codec: Codec,
    ttl: float,
    *,
    key: Callable[..., str] | None = None,
    name: str | None = None,
) -> Callable[[F], Cached[F]]:
    """The decorator behind ``app.cached``: results of the decorated function are kept for
    ``ttl`` seconds. ``key(...) -> str`` replaces the digest of the arguments: it gets them
    bound to the function's signature, as many by position as it takes by position and the
    others by name (so ``key=lambda user, **_: ...`` serves ``f(u, True)`` and
    ``f(user=u, verbose=True)`` alike); ``name`` replaces the function's qualified name in
    the key. ``kv`` is the store, or a method that gives the one to use at each call
    (``app.cached``'s: the app's broker of the moment, which ``use_memory`` swaps; a bound
    method's object owns the names)."""
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not 0 < ttl <= MAX_TTL
    ):
        raise ConfigurationError(
            f"cached(ttl=...) needs a positive number of seconds up to {MAX_TTL} (ten years), "
            f"got {ttl!r}: a cache entry that never expires would serve stale data forever"
        )
    if key is not None and not callable(key):
        raise ConfigurationError(f"cached(key=...) must be a function returning a str, got {key!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError(f"cached(name=...) must be a non-empty str, got {name!r}")

    def decorate(fn: F) -> Cached[F]:
        return Cached(kv, codec, fn, float(ttl), key=key, name=name)

    return decorate


class Cached(Generic[F]):
    """A cached function: call it like the original (same signature, sync or async), plus
    ``invalidate(*args, **kwargs)`` and ``cache_key(*args, **kwargs)``."""

    # Copied from the function by functools.update_wrapper.
    __name__: str
    __qualname__: str
    __wrapped__: F

    def __init__(
        self,
        kv: KeyValue | Callable[[], KeyValue],
        codec: Codec,
        fn: F,
        ttl: float,
        *,
        key: Callable[..., str] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"@app.cached decorates a function, got {fn!r}")
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.ttl = ttl
        if isinstance(kv, KeyValue):
            self._owner: object = kv
            self._kv: Callable[[], KeyValue] = lambda: kv
        else:
            self._owner = getattr(kv, "__self__", kv)  # names are per app, not per lookup
            self._kv = kv
        self._codec = codec
        self._fn = fn
        self._key_fn = key
        self._key_positional = None if key is None else _positional_slots(key)
        self._prefix = f"cache:{self.name}:"
        check_key(self._prefix)
        if key is None and len(self._prefix) + _DIGEST > MAX_KEY:
            raise ConfigurationError(
                f"cached name {self.name!r} is too long: its keys (cache:<name>:<64-character "
                f"digest>) would pass the store's {MAX_KEY} characters; give a shorter name="
            )
        self._claim_name(fn)
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none: key on the raw arguments
            self._signature = None
        wrapper = self._async_call if inspect.iscoroutinefunction(fn) else self._sync_call
        self._call = cast(F, wrapper)
        functools.update_wrapper(self, fn, updated=())

    def _claim_name(self, fn: Callable[..., Any]) -> None:
        """Refuse a name another live cached function of this store holds: the same
        function decorated again may share it, not a second lambda of the module or a
        closure that a factory made again over other values."""
        held = _NAMED.get((id(self._owner), self.name))
        if held is not None and held._owner is self._owner and not _same_function(held._fn, fn):
            raise ConfigurationError(
                f"@app.cached: {self.name!r} already names another cached function of this "
                "app (a second lambda of its module, or a function that a factory made again "
                "with other values): they would share entries and return each other's "
                "results; give each its own name="
            )
        _NAMED[(id(self._owner), self.name)] = self

    def __repr__(self) -> str:
        return f"<Cached {self.name} ttl={self.ttl:g}>"

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        """As a method: calls, ``cache_key`` and ``invalidate`` take the instance as their
        first argument (the ``key=`` function gets it too)."""
        if obj is None:
            return self
        return _BoundCached(self, obj)

    @property
    def __call__(self) -> F:
        # A property, so type checkers see F's own signature; Python looks ``__call__`` up
        # on the type and honours descriptors, so calling the instance calls the wrapper.
        return self._call

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The key-value key these arguments are cached under."""
        if self._key_fn is not None:
            key_args, key_kwargs = self._key_arguments(args, kwargs)
            part = self._key_fn(*key_args, **key_kwargs)
            if not isinstance(part, str):
                raise ValidationError(
                    f"the key function of cached {self.name} returned {part!r}; it must "
                    "return a str"
                )
            return check_key(self._prefix + part)
        if self._signature is not None:
            bound = self._signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args, kwargs = bound.args, bound.kwargs
        try:
            encoded = self._codec.encode_value([list(args), sorted(kwargs.items())])
        except SerializationError as exc:
            raise SerializationError(
                f"cannot make a cache key for {self.name} from its arguments ({exc}); pass "
                "@app.cached(ttl, key=lambda ...: '...') to build the key yourself"
            ) from exc
        return self._prefix + hashlib.sha256(encoded).hexdigest()

    def _key_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments for the key function, bound to the signature so that it sees
        them alike however the caller passed them: as many by position as it takes by
        position, the others by name."""
        if self._signature is None:
            return args, kwargs
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:  # e.g. a decorator's wrapper that supplies an argument itself
            return args, kwargs  # (its signature is the wrapped function's): as called
        args, kwargs = bound.args, bound.kwargs
        cut = self._key_positional
        if cut is None or len(args) <= cut:
            return args, kwargs
        params = list(self._signature.parameters.values())[cut : len(args)]
        # Only a positional-or-keyword parameter has a name to pass it by (not a /-only one,
        # nor the items of a *args): else the key function gets them as the function does.
        if len(params) != len(args) - cut or any(
            p.kind is not p.POSITIONAL_OR_KEYWORD for p in params
        ):
            return args, kwargs
        named = {p.name: value for p, value in zip(params, args[cut:], strict=True)}
        return args[:cut], {**named, **kwargs}

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the value cached for these arguments; True if there was one."""
        return self._kv().delete(self.cache_key(*args, **kwargs))

    # -- calls -----------------------------------------------------------------------------

    def _sync_call(self, *args: Any, **kwargs: Any) -> Any:
        key = self.cache_key(*args, **kwargs)
        value = self._lookup(key)
        if value is not _MISS:
            return value
        lock = Lock(self._kv(), key, _COMPUTE_TTL, auto_renew=True)
        waited = False
        for delay in backoff(first=0.001, cap=0.05):
            if lock._try_acquire():
                try:
                    value = self._lookup(key)  # filled between our miss and our grant?
                    if value is not _MISS:
                        return value
                    if not waited:
                        return self._store(key, self._fn(*args, **kwargs))
                finally:
                    lock._release_quietly()
                # The computation we waited for ended without a value (it raised, or its
                # caller died): compute off the lock, so the other waiters do too, at once,
                # rather than each wait for the one before to fail.
                return self._store(key, self._fn(*args, **kwargs))
            waited = True
            time.sleep(delay)
            value = self._lookup(key)
            if value is not _MISS:
                return value
        raise AssertionError("unreachable")  # pragma: no cover

    async def _async_call(self, *args: Any, **kwargs: Any) -> Any:
        key = self.cache_key(*args, **kwargs)
        value = await asyncio.to_thread(self._lookup, key)
        if value is not _MISS:
            return value
        lock = Lock(self._kv(), key, _COMPUTE_TTL, auto_renew=True)
        waited = False
        for delay in backoff(first=0.001, cap=0.05):
            if await lock._try_acquire_async():
                try:
                    value = await asyncio.to_thread(self._lookup, key)
                    if value is not _MISS:
                        return value
                    if not waited:
                        value = await self._fn(*args, **kwargs)
                        return await asyncio.to_thread(self._store, key, value)
                finally:
                    await asyncio.shield(asyncio.to_thread(lock._release_quietly))
                # As in _sync_call: the computation we waited for ended without a value.
                value = await self._fn(*args, **kwargs)
                return await asyncio.to_thread(self._store, key, value)
            waited = True
            await asyncio.sleep(delay)
            value = await asyncio.to_thread(self._lookup, key)
            if value is not _MISS:
                return value
        raise AssertionError("unreachable")  # pragma: no cover

    def _lookup(self, key: str) -> Any:
        raw = self._kv().get(key)
        if raw is None:
            return _MISS
        try:
            return self._codec.decode_value(raw)
        except SerializationError as exc:
            # e.g. written under another secret: a cache can recompute and overwrite it.
            log.warning("cached %s: ignoring an entry that does not decode: %s", self.name, exc)
            return _MISS

    def _store(self, key: str, value: Any) -> Any:
        """Cache ``value``; return it as a hit would (decoded: with JSON, a tuple comes
        back a list), so a caller gets the same from a miss as from a hit."""
        encoded = self._codec.encode_value(value)
        try:
            decoded = self._codec.decode_value(encoded)
        except SerializationError as exc:  # a value pickle writes but cannot read back
            log.warning("cached %s: not caching a value that does not decode: %s", self.name, exc)
            return value
        self._kv().set(key, encoded, self.ttl)
        return decoded


class _BoundCached:
    """A cached method of one instance (``Cached.__get__``)."""

    __slots__ = ("__func__", "__self__")

    def __init__(self, cached: Cached[Any], obj: object) -> None:
        self.__func__ = cached
        self.__self__ = obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__._call(self.__self__, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self.__func__.cache_key(self.__self__, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return self.__func__.invalidate(self.__self__, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<bound {self.__func__!r} of {self.__self__!r}>"


def _positional_slots(fn: Callable[..., Any]) -> int | None:
    """How many arguments ``fn`` takes by position; None for any number (a ``*args``, or a
    builtin without a signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """One function, or the same code over the same values (a factory called again)."""
    if a is b:
        return True
    if not isinstance(a, types.FunctionType) or not isinstance(b, types.FunctionType):
        return False
    if a.__code__ is not b.__code__:
        return False
    cells_a, cells_b = a.__closure__ or (), b.__closure__ or ()
    try:
        return all(
            x.cell_contents is y.cell_contents for x, y in zip(cells_a, cells_b, strict=True)
        )
    except ValueError:  # an empty cell
        return False
