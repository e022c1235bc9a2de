"""Cron expressions, pure: ``parse_cron(expr)`` and ``next_fire(expr, after, tz)``.

Five fields, ``minute hour day-of-month month day-of-week``, each a ``*`` or a list of
``n``, ``a-b``, ``*/n``, ``a-b/n`` and ``n/s`` (from ``n`` to the field's end, every ``s``).
Months and weekdays take names (``jan``..``dec``, ``sun``..``sat``); weekday 0 and 7 are both
Sunday. As in Vixie cron, when both day fields are restricted (neither starts with ``*``) a day
matches if *either* does: ``0 0 1 * mon`` fires on the 1st and on every Monday. Aliases:
``@hourly @daily @midnight @weekly @monthly @yearly @annually``.

**Time zones.** The expression is read on the wall clock of ``tz`` (an IANA name, UTC by
default). Where daylight saving time moves that clock, Conveyor does what cronie (Vixie cron's
descendant) does:

* A *fixed-time* expression (its minute and hour fields both start with a number:
  ``30 2 * * *``) fires once a day whatever the clock does. A time that the spring-forward
  gap skips (02:30 when 02:00 becomes 03:00) fires at the first instant after the gap
  (03:00 new time), once even if several such times fall in the gap; a time that the
  fall-back repeats (01:30 when 02:00 becomes 01:00) fires at its first occurrence only.
* A *wildcard* expression (its minute or hour field starts with ``*``: ``*/15 * * * *``,
  ``0 * * * *``) follows the clock: the skipped hour has no fires and the repeated hour
  fires again, so "every 15 minutes" stays every 15 minutes of real time.

Fire times are instants that strictly increase. Nothing here reads a clock: the scheduler
passes the time in, so tests need no sleeping.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import zoneinfo
from dataclasses import dataclass

from ._errors import ConfigurationError

_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # Feb 29 happens
_MINUTE = dt.timedelta(minutes=1)
# Zones change their offset months apart, and never twice within this (to and fro):
_PROBE = dt.timedelta(hours=6)
_STEPS = 10_000  # clock changes and repeated times one search may cross (a handful in practice)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0  # the number the first name stands for


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day-of-week", 0, 7, _DAYS, 0),
)


@dataclass(frozen=True)
class CronSpec:
    """A parsed expression: the allowed values of each field."""

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_star: bool  # day-of-month starts with '*' (unrestricted)
    weekday_star: bool
    wildcard: bool = False  # minute or hour starts with '*': follows a zone's clock changes

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        if self.day_star or self.weekday_star:
            # One side unrestricted: the other decides (both '*': every day).
            return dom and dow
        return dom or dow

    def next_after(self, after: dt.datetime, tz: dt.tzinfo = dt.UTC) -> dt.datetime:
        """The first fire time strictly after ``after``, as an aware UTC datetime, with the
        expression read on the wall clock of ``tz`` (naive ``after`` is taken as UTC)."""
        if after.tzinfo is None:
            after = after.replace(tzinfo=dt.UTC)
        after = after.astimezone(dt.UTC)
        if tz is dt.UTC:
            return self._wall_from(_next_minute(after.replace(tzinfo=None))).replace(tzinfo=dt.UTC)
        return self._next_in_zone(after, tz)

    def _next_in_zone(self, after: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
        """Walk the instants after ``after`` one stretch of constant UTC offset at a time:
        the next matching wall time is found as in UTC, and where a clock change lies
        before it the walk goes on from the change (see the module docstring)."""
        t, inclusive = after, False
        for _ in range(_STEPS):
            offset = _offset(t, tz)
            wall = (t + offset).replace(tzinfo=None)
            wanted = self._wall_from(wall if inclusive and wall.second == 0 else _next_minute(wall))
            fire = (wanted - offset).replace(tzinfo=dt.UTC)
            change = _first_change(t, fire, offset, tz)
            if change is None:
                if self.wildcard or fire.astimezone(tz).fold == 0:
                    return fire
                t, inclusive = fire, False  # a fixed time repeated by a fall-back: ran already
                continue
            after_change = _offset(change, tz)
            if after_change > offset:  # spring forward: walls in [change + offset, + after) skipped
                if not self.wildcard and wanted < (change + after_change).replace(tzinfo=None):
                    return change
                t = change
            else:  # fall back: walls in [change + after, + offset) come again
                t = change if self.wildcard else change + (offset - after_change)
            inclusive = True
        raise ConfigurationError(f"cron expression {self.expr!r}: no fire time found in {tz}")

    def _wall_from(self, start: dt.datetime) -> dt.datetime:
        """The first matching wall time at or after ``start`` (naive, a whole minute)."""
        day = start.date()
        # parse_cron refuses expressions that never fire, so a match comes within a leap cycle
        # (Feb 29 on a chosen weekday can take 28 years; 40 covers the century rule).
        for _ in range(366 * 40):
            if self.day_matches(day):
                found = self._time_in(day, start)
                if found is not None:
                    return found
            day += dt.timedelta(days=1)
        raise ConfigurationError(f"cron expression {self.expr!r} does not fire in 40 years")

    def _time_in(self, day: dt.date, start: dt.datetime) -> dt.datetime | None:
        first_hour, first_minute = (start.hour, start.minute) if day == start.date() else (0, 0)
        for hour in self.hours:
            if hour < first_hour:
                continue
            floor = first_minute if hour == first_hour else 0
            for minute in self.minutes:
                if minute >= floor:
                    return dt.datetime(day.year, day.month, day.day, hour, minute)
        return None


def _next_minute(wall: dt.datetime) -> dt.datetime:
    return wall.replace(second=0, microsecond=0) + _MINUTE


def _offset(instant: dt.datetime, tz: dt.tzinfo) -> dt.timedelta:
    return instant.astimezone(tz).utcoffset() or dt.timedelta(0)


def _first_change(
    start: dt.datetime, end: dt.datetime, offset: dt.timedelta, tz: dt.tzinfo
) -> dt.datetime | None:
    """The first instant in ``(start, end]`` where ``tz`` leaves ``offset`` (``start`` is on
    it), or None. Looked for a stretch of ``_PROBE`` at a time, not by comparing the ends
    alone: a fire months away can be on the same offset after two changes (a fall-back and
    the next spring-forward), and the times the first one repeated come before it."""
    low = start
    while low < end:
        high = min(low + _PROBE, end)
        if _offset(high, tz) != offset:
            return _change(low, high, offset, tz)
        low = high
    return None


def _change(
    start: dt.datetime, end: dt.datetime, offset: dt.timedelta, tz: dt.tzinfo
) -> dt.datetime:
    """The instant in ``(start, end]`` where ``tz`` leaves ``offset`` (``start`` is on it,
    ``end`` is not), found by halving; zones change their offset on whole seconds."""
    low, high = math.floor(start.timestamp()), math.ceil(end.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(dt.datetime.fromtimestamp(middle, dt.UTC), tz) == offset:
            low = middle
        else:
            high = middle
    return dt.datetime.fromtimestamp(high, dt.UTC)


def time_zone(name: str) -> dt.tzinfo:
    """The ``tzinfo`` of an IANA zone name; ``ConfigurationError`` naming a bad one."""
    if not isinstance(name, str):
        raise ConfigurationError(
            f"tz takes an IANA time zone name such as 'Europe/Paris', got {name!r}"
        )
    return _zone(name)


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> dt.tzinfo:
    if name == "UTC":
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris', "
            "'America/New_York' or 'UTC' (where the system has no time zone database, "
            "pip install tzdata)"
        ) from exc


def _bad(expr: str, field: _Field, text: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"bad cron expression {expr!r}: {field.name} field {text!r} {why} "
        f"(allowed {field.low}-{field.high}; format: minute hour day-of-month month day-of-week)"
    )


def _number(expr: str, field: _Field, text: str, whole: str) -> int:
    low = text.lower()
    if field.names and low in field.names:
        return field.names.index(low) + field.name_base
    if not (text.isascii() and text.isdigit()):  # not '²' nor '٣', which str.isdigit takes
        raise _bad(expr, field, whole, f"has {text!r}, which is not a number")
    value = int(text)
    if not field.low <= value <= field.high:
        raise _bad(expr, field, whole, f"has {value}, out of range")
    return value


def _parse_field(expr: str, field: _Field, text: str) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise _bad(expr, field, text, "has an empty list item")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text or part.endswith("/"):
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise _bad(expr, field, text, f"has step {step_text!r}; use a positive number")
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            a, _, b = base.partition("-")
            low, high = _number(expr, field, a, text), _number(expr, field, b, text)
            if low > high:
                raise _bad(expr, field, text, f"has the range {base!r}, which runs backwards")
        else:
            low = _number(expr, field, base, text)
            high = field.high if step_text else low
        values.update(range(low, high + 1, step))
    return values


@functools.lru_cache(maxsize=256)
def parse_cron(expr: str) -> CronSpec:
    """Parse and check an expression; ``ConfigurationError`` names the bad field."""
    if not isinstance(expr, str):
        raise ConfigurationError(f"a cron expression is a string, got {expr!r}")
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in _ALIASES:
            raise ConfigurationError(
                f"bad cron expression {expr!r}: unknown alias; use one of " + ", ".join(_ALIASES)
            )
        text = _ALIASES[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        raise ConfigurationError(
            f"bad cron expression {expr!r}: {len(parts)} fields, need 5 "
            "(minute hour day-of-month month day-of-week), e.g. '*/5 * * * *'"
        )
    sets = [_parse_field(expr, f, p) for f, p in zip(_FIELDS, parts, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    spec = CronSpec(
        expr=expr,
        minutes=tuple(sorted(sets[0])),
        hours=tuple(sorted(sets[1])),
        days=frozenset(sets[2]),
        months=frozenset(sets[3]),
        weekdays=weekdays,
        day_star=parts[2].startswith("*"),
        weekday_star=parts[4].startswith("*"),
        wildcard=parts[0].startswith("*") or parts[1].startswith("*"),
    )
    _check_fires(spec, parts)
    return spec


def _check_fires(spec: CronSpec, parts: list[str]) -> None:
    """Refuse a day-of-month that no chosen month has (``0 0 30 2 *``): it would never fire."""
    if spec.day_star or not spec.weekday_star:
        return  # '*' days include the 1st; a restricted weekday always comes round
    if any(d <= _MAX_DAYS[m - 1] for m in spec.months for d in spec.days):
        return
    raise ConfigurationError(
        f"bad cron expression {spec.expr!r}: day-of-month field {parts[2]!r} never occurs in "
        f"month field {parts[3]!r}, so it would never fire"
    )


def next_fire(expr: str, after: dt.datetime, tz: str = "UTC") -> dt.datetime:
    """The first time strictly after ``after`` that ``expr``, read on the wall clock of the
    IANA zone ``tz``, fires, as an aware UTC datetime. A naive ``after`` is taken as UTC."""
    return parse_cron(expr).next_after(after, time_zone(tz))
