"""The in-memory key-value store: reference semantics of the ``KeyValue`` port."""

from __future__ import annotations

import threading

from ..._clock import Clock, SystemClock
from ...stores._port import KeyValue, Updater, check_key, parse_counter

# Control characters are refused in user keys, so these prefixes cannot collide with them.
_LOCK = "\x00lock:"
_FENCE = "\x00fence:"


class MemoryKV(KeyValue):
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._mutex = threading.RLock()

    def _read(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= self._clock.time():
            del self._data[key]
            return None
        return value

    def _write(self, key: str, value: bytes, ttl: float | None) -> None:
        self._data[key] = (value, None if ttl is None else self._clock.time() + ttl)

    def get(self, key: str) -> bytes | None:
        check_key(key)
        with self._mutex:
            return self._read(key)

    def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        check_key(key)
        with self._mutex:
            if nx and self._read(key) is not None:
                return False
            self._write(key, value, ttl)
            return True

    def delete(self, key: str) -> bool:
        check_key(key)
        with self._mutex:
            existed = self._read(key) is not None
            self._data.pop(key, None)
            return existed

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        check_key(key)
        with self._mutex:
            old = self._read(key)
            value = parse_counter(key, old) + amount
            expires = self._data[key][1] if old is not None else None
            if old is None and ttl is not None:
                expires = self._clock.time() + ttl
            self._data[key] = (str(value).encode(), expires)
            return value

    def ttl(self, key: str) -> float | None:
        check_key(key)
        with self._mutex:
            if self._read(key) is None:
                return None
            expires = self._data[key][1]
            return None if expires is None else expires - self._clock.time()

    def update(
        self, key: str, fn: Updater, ttl: float | None = None, retries: int = 50
    ) -> bytes | None:
        check_key(key)
        # One process: holding the mutex while fn runs is the whole transaction.
        with self._mutex:
            new = fn(self._read(key))
            if new is None:
                self._data.pop(key, None)
            else:
                self._write(key, new, ttl)
            return new

    def lock_acquire(self, name: str, token: str, ttl: float) -> int | None:
        check_key(name)
        with self._mutex:
            if self._read(_LOCK + name) is not None:
                return None
            self._write(_LOCK + name, token.encode(), ttl)
            fence = int(self._read(_FENCE + name) or b"0") + 1
            self._write(_FENCE + name, str(fence).encode(), None)
            return fence

    def lock_release(self, name: str, token: str) -> bool:
        check_key(name)
        with self._mutex:
            if self._read(_LOCK + name) != token.encode():
                return False
            del self._data[_LOCK + name]
            return True

    def lock_extend(self, name: str, token: str, ttl: float) -> bool:
        check_key(name)
        with self._mutex:
            if self._read(_LOCK + name) != token.encode():
                return False
            self._write(_LOCK + name, token.encode(), ttl)
            return True
