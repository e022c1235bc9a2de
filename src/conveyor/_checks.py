"""Checking option values where they come in: one rule per kind of value, whatever the
option and whatever the broker.

Every option of a task, of a call (``.options(...)``) and of a ``Worker`` goes through one
of these once, where it is given: a bad value is an ``InvalidOption`` naming the option, the
value and what to write instead, raised before anything is written, never a ``TypeError``
later or a job dead-lettered as undecodable because a NaN could not travel. ``bool`` is not
a number here (``retries=True`` is a mistake, not 1), and NaN and infinities are refused.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from ._errors import InvalidOption

# The longest duration any option takes: beyond it a value is a mistake (a timestamp given
# as a delay, milliseconds given as seconds), and within it every broker's integer
# milliseconds and every timer's wait still hold it.
MAX_SECONDS = 100 * 365 * 86400
# The latest time an ``eta`` may name: the end of year 9999, as far as datetime goes.
MAX_TIMESTAMP = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()


def refuse(name: str, value: Any, rule: str, example: str) -> InvalidOption:
    """``bad backoff=nan: <what it takes>; write backoff=2``."""
    return InvalidOption(f"bad {name}={shown(value)}: {rule}; write {example}")


def seconds(
    name: str, value: Any, *, least: float = 0.0, strictly: bool = False, example: str
) -> float:
    """A duration: a number of seconds or a ``timedelta``, finite, at least ``least`` (more
    than it if ``strictly``) and at most ``MAX_SECONDS``."""
    if isinstance(value, dt.timedelta):
        number = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise refuse(name, value, f"{name} takes seconds (a number or a timedelta)", example)
    low = number > least if strictly else number >= least
    if not (math.isfinite(number) and low and number <= MAX_SECONDS):
        bound = f"more than {least:g}" if strictly else f"{least:g} or more"
        rule = (
            f"{name} takes a finite number of seconds, {bound}, at most {MAX_SECONDS} (100 years)"
        )
        raise refuse(name, value, rule, example)
    return number


def whole(name: str, value: Any, least: int, most: int, example: str) -> int:
    """A whole number from ``least`` to ``most`` (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        rule = f"{name} takes a whole number from {least} to {most}"
        raise refuse(name, value, rule, example)
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise refuse(name, value, f"{name} takes True or False", f"{name}=True")
    return value


def names(name: str, value: Any, example: str) -> tuple[str, ...]:
    """A list of strings (not one string, which would be read as its letters)."""
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence | set | frozenset)
        or not all(isinstance(item, str) for item in value)
    ):
        raise refuse(name, value, f"{name} takes a list of names", example)
    return tuple(value)


def packages(name: str, value: Any, example: str) -> tuple[str, ...]:
    """A list of Python package names, each dotted (``myapp.tasks``, whose top-level
    package ``myapp`` is what counts) or a comma list of them. A name that is not one
    (``"."``, ``".myapp"``, ``"my-app"``) names no package: ``"."`` stood for the package
    ``""``, which the callables without a module (``sys.stderr.write``) seemed to be in."""
    entries = names(name, value, example)
    for entry in entries:
        for part in entry.split(","):
            package = part.strip()
            if package and not all(p.isidentifier() for p in package.split(".")):
                rule = (
                    f"{name} takes Python package names, dotted identifiers such as myapp or "
                    f"myapp.tasks, and {package!r} is not one"
                )
                raise refuse(name, value, rule, example)
    return entries


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
