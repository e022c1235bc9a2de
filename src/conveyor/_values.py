"""What travels as JSON: the values that arrive exactly as they were sent.

JSON has no NaN, no bytes, no sets, no dates, and only str keys. msgspec encodes many of
these anyway, as something else: NaN as ``null``, a set as a list, ``{1: x}`` as
``{"1": x}``, a datetime or a UUID as a str, a dataclass as an object. The task would then
receive a value that is not the one sent (``d[1]`` fails, ``when.year`` fails, a NaN is
None). So the codec calls ``check`` on every argument, result and stored value before
encoding it, and refuses, naming where it is and what to use instead, anything that would
not come back as it went, with two conversions every JSON queue makes, documented in
docs/reliability.md: a tuple arrives as a list, and a member of a ``str`` or ``int`` enum
(``StrEnum``, ``IntEnum``, ``IntFlag``) arrives as its value, which compares and hashes
equal to it.

Kept exactly: None, bool, int (up to ``MAX_INT_DIGITS`` digits), float (finite; -0.0 too),
str (valid Unicode), list, dict with str keys, nested up to ``MAX_DEPTH`` levels.

An int past ``MAX_INT_DIGITS`` is refused too (a negative one counts its minus sign): the
decoder refuses it whatever Python's own limit on int-to-str conversion says. The one int
that gets through under Python's default limit is a negative one of exactly 4,300 digits
(the limit does not count the sign, the decoder does): the job is dead-lettered as
undecodable, with that reason. Python's default limit has the encoder refuse it
already, so ints are checked only after a failed encode, or on every value where that
limit was raised or lifted (``sys.set_int_max_str_digits``): a job that encoded would
otherwise be dead-lettered as undecodable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import sys
import uuid
from typing import Any

import msgspec

from ._errors import SerializationError

MAX_DEPTH = 200  # levels of lists and dicts within one value; the C encoder recurses

MAX_INT_DIGITS = 4300  # the decoder's bound (and Python's default limit), whatever sys says
_INT_BOUND = 10**MAX_INT_DIGITS
_NEGATIVE_BOUND = -(10 ** (MAX_INT_DIGITS - 1))  # the decoder counts the minus sign

PLAIN = frozenset({str, int, bool, type(None)})
_PLAIN_BUT_STR = PLAIN - {str}
_PLAIN_BUT_INT = PLAIN - {int}
_PLAIN_BUT_STR_INT = PLAIN - {str, int}
_CONTAINERS = frozenset({list, tuple, dict})
_STR = frozenset({str})
_NUMBERS = frozenset({int, bool, float})
_PICKLE = "or use Conveyor(serializer='pickle', secret=...), which keeps Python objects as they are"

# Where a value is, built only when it is refused: (parent trail, key), or (None, a name).
Trail = tuple[Any, Any]


def check(value: Any, trail: Trail, *, text: bool = False) -> None:
    """Raise ``SerializationError`` if ``value`` would not arrive as it was sent.

    ``trail`` names the value in the message: ``root("result")``, ``(root("args"), 1)``.
    ``text`` also checks that every str is valid Unicode (one with a lone surrogate cannot
    be encoded as UTF-8); that costs a pass over non-ASCII text, so the codec asks for it
    only after the encoder failed, to say where.
    """
    if text or not ints_bounded():  # ints too
        plain = _PLAIN_BUT_STR_INT if text else _PLAIN_BUT_INT
    else:
        plain = PLAIN
    kind = type(value)
    if kind in plain or (kind is float and value - value == 0.0):
        return
    if kind not in _CONTAINERS:
        _leaf_or_refuse(value, trail)
        return
    todo: list[tuple[Any, int, Trail]] = [(value, 1, trail)]
    while todo:
        obj, depth, trail = todo.pop()
        if type(obj) is dict:
            for key in obj:
                if type(key) is not str or text:
                    problem = _key_problem(key)
                    if problem is not None:
                        raise _refused(trail, problem)
            values: Any = obj.values()
        else:
            values = obj
        # Long containers mostly hold only scalars: look at their types in C, then item by
        # item only if one is something else.
        if len(values) > 8:
            kinds = set(map(type, values))
            # (A finite sum: no int near MAX_INT_DIGITS either.)
            if kinds <= plain or (kinds <= _NUMBERS and _finite(values)):
                continue
        for key, item in obj.items() if type(obj) is dict else enumerate(obj):
            kind = type(item)
            if kind in plain or (kind is float and item - item == 0.0):  # inf - inf is NaN
                continue
            if kind in _CONTAINERS:
                if depth >= MAX_DEPTH:
                    raise _refused(
                        (trail, key),
                        f"it is nested more than {MAX_DEPTH} levels deep; flatten it (e.g. a "
                        "list of rows, or a parent id per node instead of nesting)",
                    )
                todo.append((item, depth + 1, (trail, key)))
                continue
            _leaf_or_refuse(item, (trail, key))


def ints_bounded() -> bool:
    """Whether the encoder refuses an int past ``MAX_INT_DIGITS`` by itself (Python's limit
    on int-to-str conversion is at most that), so ``check`` need not look at ints."""
    return 0 < sys.get_int_max_str_digits() <= MAX_INT_DIGITS


def root(name: str) -> Trail:
    """The trail of a value at the top of a message: ``result``, ``args``."""
    return (None, name)


def _finite(numbers: Any) -> bool:
    """True if a sum of ints and floats is finite, so each of them is; False may also mean
    that the sum overflowed (then each is looked at)."""
    try:
        total = sum(numbers, 0.0)
    except OverflowError:  # an int too large for a float
        return False
    return bool(total - total == 0.0)


def _leaf_or_refuse(value: Any, trail: Trail) -> None:
    problem = _problem(value)
    if problem is not None:
        raise _refused(trail, problem)


def _refused(trail: Trail, problem: str) -> SerializationError:
    if problem.endswith("lone surrogate"):
        problem += " (half of a UTF-16 pair), which has no UTF-8 form; fix the text"
    return SerializationError(f"cannot encode {path(trail)} as JSON: {problem}; {_PICKLE}")


def path(trail: Trail) -> str:
    """``args[1]["x"]``; long paths keep their ends (``args[0][0][0][0]…[0][0]``)."""
    keys: list[Any] = []
    while trail[0] is not None:
        trail, key = trail
        keys.append(key)
    keys.reverse()
    parts = [f"[{k}]" if type(k) is int else f"[{quoted(k)}]" for k in keys]
    if len(parts) > 8:
        parts = [*parts[:4], "…", *parts[-2:]]
    return str(trail[1]) + "".join(parts)


def quoted(key: Any) -> str:
    try:
        return msgspec.json.encode(key).decode()
    except Exception:
        return repr(key)


def _problem(value: Any) -> str | None:
    """Why a value that is neither plain nor a list, tuple or dict cannot travel; None if it
    travels converted as documented (an enum member of a str or int enum)."""
    if isinstance(value, enum.Enum):
        if isinstance(value, str | int):
            return None
        return (
            f"{value!r} would arrive as its value {value.value!r}; use its .value (or .name) "
            f"and look the member up in the task ({type(value).__name__}(value))"
        )
    if type(value) is int:
        if _NEGATIVE_BOUND < value < _INT_BOUND:
            return None
        return (
            f"an int of more than {MAX_INT_DIGITS:,} digits, which the worker cannot decode; "
            "send str(n) and convert it back with int(s) (after sys.set_int_max_str_digits)"
        )
    if type(value) is float:
        return (
            f"float({str(value)!r}) has no JSON form and would arrive as None; use None or a "
            "str instead"
        )
    if type(value) is str:
        return (
            None
            if _utf8(value)
            else f"the str {value[:40]!r} holds a lone surrogate, which has no UTF-8 form"
        )
    name = type(value).__qualname__
    for types, advice in _ADVICE:
        if isinstance(value, types):
            return advice.format(name=name)
    if dataclasses.is_dataclass(value) or isinstance(value, msgspec.Struct):
        return (
            f"a {name} would arrive as a dict; use dataclasses.asdict(x) (msgspec.to_builtins "
            "for a Struct) and rebuild it in the task"
        )
    return (
        f"{name} objects have no JSON form; send plain values (None, bool, int, finite float, "
        "str, list, tuple, dict with str keys)"
    )


_ADVICE: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (
        (bytes, bytearray, memoryview),
        "{name} would arrive as a base64 str; use base64.b64encode(b).decode() and decode it "
        "in the task, or keep large data in app.store and pass its key",
    ),
    (
        (set, frozenset),
        "a {name} would arrive as a list; use sorted(s) (or list(s)) and rebuild the set",
    ),
    (
        (dt.datetime, dt.date, dt.time),
        "a {name} would arrive as an ISO 8601 str; use x.isoformat() and parse it back "
        "with {name}.fromisoformat",
    ),
    (dt.timedelta, "a timedelta would arrive as a str; use td.total_seconds()"),
    (decimal.Decimal, "a Decimal would arrive as a str; use str(d) and Decimal(s)"),
    (uuid.UUID, "a UUID would arrive as a str; use str(u) and uuid.UUID(s)"),
    (
        tuple,  # subclasses only: plain tuples travel as lists
        "a {name} would arrive as a plain list, without its field names; use x._asdict() "
        "or tuple(x)",
    ),
    (dict, "a {name} would arrive as a plain dict, without what {name} adds; use dict(x)"),
    (list, "a {name} would arrive as a plain list; use list(x)"),
    (str, "a {name} (a subclass of str) has no JSON form; use str(x)"),
    (int, "a {name} (a subclass of int) has no JSON form; use int(x)"),
    (float, "a {name} (a subclass of float) has no JSON form; use float(x)"),
)


def _key_problem(key: Any) -> str | None:
    if type(key) is str:
        return (
            None
            if _utf8(key)
            else f"the key {key[:40]!r} holds a lone surrogate, which has no UTF-8 form"
        )
    if isinstance(key, str) and isinstance(key, enum.Enum):
        return None  # a StrEnum key arrives as its value: equal, same hash
    if isinstance(key, int | float | enum.Enum) and _encodes(key):
        arrives = msgspec.json.encode({key: 0}).decode()[1:-3]
        return (
            f"the {type(key).__qualname__} key {key!r} would arrive as the str {arrives}, so "
            f"d[{key!r}] would no longer find it; use str keys, or a list of [key, value] pairs"
        )
    return (
        f"a {type(key).__qualname__} key has no JSON form (keys arrive as str); use str keys, "
        "or a list of [key, value] pairs"
    )


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _encodes(key: Any) -> bool:
    try:
        msgspec.json.encode({key: 0})
    except Exception:
        return False
    return True
