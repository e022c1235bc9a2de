"""The key-value port on Redis: values, counters, optimistic updates and fenced locks.

Each key is a hash ``{P:kv:<key>}`` with ``v`` (the value) and ``x`` (expiry in ms); a real
``PEXPIRE`` a minute longer collects the garbage. Locks live apart, in ``{P:lock:<name>}``
(and their fencing counters beside them), so no value key can reach a lock. Every operation
is one Lua script on one key (a lock and its fencing counter share a hash tag), and
``update`` is ``WATCH``/``MULTI``/``EXEC`` retried. See ``brokers/redis/_keys.py``.

Time: with the real clock (``SystemClock``) expiry is decided by the server's ``TIME``, so
clients whose clocks disagree still agree on who holds a lock; with an injected fake clock
(tests) the client passes its ``now`` instead.
"""

from __future__ import annotations

from typing import Any

import redis

from ..._clock import Clock, SystemClock
from ..._errors import BrokerError, TransactionConflict
from ...stores._port import KeyValue, NotACounter, Updater, check_key
from ._errors import TRANSLATE
from ._keys import fence_key, kv_key, lock_key

_GRACE_MS = 60000
# The longest real PEXPIRE we set (2^53 ms, some 285,000 years): exact in Lua's doubles, and
# far from the server's limit. A longer TTL still expires by its ``x``; only the garbage
# collection of its key comes earlier, which nothing alive can notice.
_MAX_PEXPIRE_MS = 2**53
# ARGV[1] is the injected clock's now in ms, or '' for the server's own TIME.
_NOW = """
local NOW
if ARGV[1] == '' then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  NOW = tonumber(ARGV[1])
end
"""
_LIVE = (
    _NOW
    + f"local GRACE_MS, MAX_PEXPIRE_MS = {_GRACE_MS}, {_MAX_PEXPIRE_MS}\n"
    + """
local function live(k)
  local r = redis.call('HMGET', k, 'v', 'x')
  if not r[1] then return nil end
  if r[2] and r[2] ~= '' and tonumber(r[2]) <= NOW then
    redis.call('DEL', k)
    return nil
  end
  return r[1], r[2]
end
local function write(k, v, ttl)
  redis.call('DEL', k)
  redis.call('HSET', k, 'v', v)
  if ttl ~= '' then
    -- Whole numbers as digits (a number argument would go as '1e+18', which PEXPIRE
    -- refuses after the HSETs took effect), and a PEXPIRE the server can always set.
    local ms = tonumber(ttl)
    redis.call('HSET', k, 'x', string.format('%.0f', NOW + ms))
    redis.call('PEXPIRE', k, string.format('%.0f', math.min(ms + GRACE_MS, MAX_PEXPIRE_MS)))
  end
end
"""
)
# A counter's sum in decimal digits, exact at any size as the other brokers' are (Lua's
# numbers are doubles: past 2^53 they round, and '%d' of a sum past 2^63 wraps).
_DECIMAL = """
local function magnitude(s)  -- negative?, the digits without sign or leading zeros
  local d = string.gsub(string.gsub(s, '^[+-]', ''), '^0+', '')
  if d == '' then return false, '0' end
  return string.sub(s, 1, 1) == '-', d
end
local function add_digits(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48 end
    if j > 0 then d = d + string.byte(b, j) - 48 end
    out[#out + 1] = string.char(48 + d % 10)
    carry = d >= 10 and 1 or 0
    i, j = i - 1, j - 1
  end
  return string.reverse(table.concat(out))
end
local function sub_digits(a, b)  -- a >= b
  local out, borrow, i, j = {}, 0, #a, #b
  while i > 0 do
    local d = string.byte(a, i) - 48 - borrow
    if j > 0 then d = d - (string.byte(b, j) - 48) end
    if d < 0 then d, borrow = d + 10, 1 else borrow = 0 end
    out[#out + 1] = string.char(48 + d)
    i, j = i - 1, j - 1
  end
  local r = string.gsub(string.reverse(table.concat(out)), '^0+', '')
  if r == '' then return '0' end
  return r
end
local function signed(negative, digits)
  if negative and digits ~= '0' then return '-' .. digits end
  return digits
end
local function add_decimal(a, b)
  if #a < 16 and #b < 16 then  -- below 10^15 either way: a double sums them exactly
    return string.format('%d', tonumber(a) + tonumber(b))
  end
  local na, da = magnitude(a)
  local nb, db = magnitude(b)
  if na == nb then return signed(na, add_digits(da, db)) end
  if #da > #db or (#da == #db and da >= db) then return signed(na, sub_digits(da, db)) end
  return signed(nb, sub_digits(db, da))
end
"""
_SCRIPTS = {
    "get": "return (live(KEYS[1]))",
    "set": """
if ARGV[4] == '1' and live(KEYS[1]) then return 0 end
write(KEYS[1], ARGV[2], ARGV[3])
return 1""",
    "delete": """
local v = live(KEYS[1])
redis.call('DEL', KEYS[1])
if v then return 1 end
return 0""",
    "incr": _DECIMAL
    + """
local v, x = live(KEYS[1])
if v and not string.match(v, '^[+-]?%d+$') then
  return redis.error_reply('NOTINT not a counter')
end
local s = add_decimal(v or '0', ARGV[2])
if v then
  redis.call('HSET', KEYS[1], 'v', s)
else
  write(KEYS[1], s, ARGV[3])
end
return s""",
    "ttl": """
local v, x = live(KEYS[1])
if not v or not x or x == '' then return -1 end
return string.format('%.0f', tonumber(x) - NOW)""",
    "lock_acquire": """
if live(KEYS[1]) then return false end
write(KEYS[1], ARGV[2], ARGV[3])
return redis.call('INCR', KEYS[2])""",
    "lock_release": """
if live(KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1""",
    "lock_extend": """
if live(KEYS[1]) ~= ARGV[2] then return 0 end
write(KEYS[1], ARGV[2], ARGV[3])
return 1""",
}
# update's read, after WATCH: the live value (or nil) and the time it was judged by. Read-only:
# a write here would trip our own WATCH.
_READ = (
    _NOW
    + """
local r = redis.call('HMGET', KEYS[1], 'v', 'x')
if r[1] and r[2] and r[2] ~= '' and tonumber(r[2]) <= NOW then r[1] = false end
return {r[1], NOW}
"""
)


def _ttl_arg(ttl: float | None) -> str:
    return "" if ttl is None else str(max(round(ttl * 1000), 0))


class RedisKV(KeyValue):
    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        *,
        prefix: str = "conveyor",
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock or SystemClock()
        self._scripts = {n: client.register_script(_LIVE + s) for n, s in _SCRIPTS.items()}

    def _now(self) -> int | str:
        """NOW for a script: '' (the server's TIME) on the real clock, else the fake one's."""
        if isinstance(self._clock, SystemClock):
            return ""
        return round(self._clock.time() * 1000)

    def _run(self, name: str, keys: list[str], *args: Any) -> Any:
        with TRANSLATE:
            return self._scripts[name](keys=keys, args=[self._now(), *args])

    def _key(self, key: str) -> str:
        return kv_key(self._prefix, check_key(key))

    def get(self, key: str) -> bytes | None:
        value = self._run("get", [self._key(key)])
        return None if value is None else bytes(value)

    def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        return bool(self._run("set", [self._key(key)], value, _ttl_arg(ttl), "1" if nx else "0"))

    def delete(self, key: str) -> bool:
        return bool(self._run("delete", [self._key(key)]))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        try:
            return int(self._run("incr", [self._key(key)], int(amount), _ttl_arg(ttl)))
        except BrokerError as exc:
            if "NOTINT" in str(exc):
                raise NotACounter(key) from None
            raise

    def ttl(self, key: str) -> float | None:
        left = int(self._run("ttl", [self._key(key)]))
        return None if left < 0 else left / 1000

    def update(
        self, key: str, fn: Updater, ttl: float | None = None, retries: int = 50
    ) -> bytes | None:
        k = self._key(key)
        attempts = max(retries, 0) + 1
        for _ in range(attempts):
            with TRANSLATE, self._client.pipeline(transaction=True) as pipe:
                try:
                    return self._update_once(pipe, k, fn, ttl)
                except redis.WatchError:
                    continue
        raise TransactionConflict(
            f"store.update({key!r}) conflicted {attempts} times with concurrent writers; "
            "retry later, or raise `retries` for a hot key"
        )

    def _update_once(self, pipe: Any, k: str, fn: Updater, ttl: float | None) -> bytes | None:
        pipe.watch(k)
        value, now = pipe.execute_command("EVAL", _READ, 1, k, self._now())
        new = fn(None if value is None else bytes(value))
        pipe.multi()
        pipe.delete(k)
        if new is not None:
            pipe.hset(k, "v", new)
            if ttl is not None:
                ms = max(round(ttl * 1000), 0)
                pipe.hset(k, "x", now + ms)
                pipe.pexpire(k, min(ms + _GRACE_MS, _MAX_PEXPIRE_MS))
        pipe.execute()
        return new

    def lock_acquire(self, name: str, token: str, ttl: float) -> int | None:
        check_key(name)
        keys = [lock_key(self._prefix, name), fence_key(self._prefix, name)]
        fence = self._run("lock_acquire", keys, token, _ttl_arg(ttl))
        return None if fence is None else int(fence)

    def lock_release(self, name: str, token: str) -> bool:
        check_key(name)
        return bool(self._run("lock_release", [lock_key(self._prefix, name)], token))

    def lock_extend(self, name: str, token: str, ttl: float) -> bool:
        check_key(name)
        return bool(self._run("lock_extend", [lock_key(self._prefix, name)], token, _ttl_arg(ttl)))
