"""What every command prints: tables for people, one JSON document for scripts.

JSON conventions (docs/cli.md): keys are snake_case and always present (``null`` when
unknown); every time is an ISO-8601 string in UTC with milliseconds and a ``Z``
(``2025-03-01T14:05:09.120Z``); durations are seconds. Tables go to stdout through Rich;
errors and logs go to stderr, so ``--json`` output is the only thing on stdout.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._inspect import iso, safe_repr

__all__ = ["clock", "console", "counts_table", "emit_json", "iso", "json_option", "span"]
__all__ += ["table", "text", "when"]

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document (see docs/cli.md)."
)


def _fallback(value: object) -> object:
    """Values JSON has no type for (pickled objects, bytes): their repr, never a crash (not
    even from a repr that raises: ``safe_repr``)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return safe_repr(value)


# How deep ``plain`` follows lists and dicts. JSON values nest at most 200 levels when they
# are enqueued, but a payload written into the broker by other means, or pickled, may nest
# as deep as a worker decodes (~990): ``json.dumps``, which recurses, stops near 1000.
DEEPEST = 500
_TOO_DEEP = f"(nested more than {DEEPEST} levels deep: not shown)"
_CYCLE = "(contains itself: not shown again)"

_Frame = tuple[Iterator[tuple[Any, Any]], dict[Any, Any] | list[Any], int]


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: a float that is not finite, and a dict key JSON has
    no form for (a tuple, from a pickled result), as their repr (``json.dumps`` writes
    ``NaN``, which no JSON reader takes, and raises on the key); what is nested deeper than
    ``DEEPEST`` levels, or contains itself (pickle keeps such values), as a note. Without
    recursion: a value nested 500 deep ended the command with a ``RecursionError``."""
    top: list[Any] = [None]
    frames: list[_Frame] = []  # the containers being converted, outermost first
    inside: set[int] = set()  # their ids: one met again inside itself is a cycle
    _put(top, 0, value, frames, inside)
    while frames:
        items, into, ident = frames[-1]
        for key, item in items:
            if _put(into, key, item, frames, inside):
                break  # its items first; this container's go on after them
        else:
            frames.pop()
            inside.discard(ident)
    return top[0]


def _put(into: Any, key: Any, value: Any, frames: list[_Frame], inside: set[int]) -> bool:
    """Set ``into[key]`` to ``value`` as JSON can hold it; True if it is a list or dict whose
    items are yet to be put (its frame is pushed)."""
    if isinstance(value, float):
        into[key] = value if math.isfinite(value) else repr(value)
        return False
    if not isinstance(value, dict | list | tuple):
        into[key] = value
        return False
    if id(value) in inside:
        into[key] = _CYCLE
        return False
    if len(frames) >= DEEPEST:
        into[key] = _TOO_DEEP
        return False
    shell: dict[Any, Any] | list[Any]
    if isinstance(value, dict):
        shell = {}
        items: Iterator[tuple[Any, Any]] = ((_key(k), v) for k, v in value.items())
    else:
        shell = [None] * len(value)
        items = enumerate(value)
    into[key] = shell
    frames.append((items, shell, id(value)))
    inside.add(id(value))
    return True


def _key(key: Any) -> Any:
    if key is None or isinstance(key, str | int) or (isinstance(key, float) and math.isfinite(key)):
        return key
    return safe_repr(key)


def emit_json(document: dict[str, Any]) -> None:
    text = json.dumps(
        plain(document), indent=2, ensure_ascii=False, allow_nan=False, default=_fallback
    )
    click.echo(text)


def console() -> Console:
    # Rich takes the width from the terminal, else COLUMNS, else 80; never highlight data.
    return Console(highlight=False)


def when(ts: float | None) -> str:
    """A time for people: relative when near, else UTC to the minute."""
    if ts is None or ts <= 0:
        return ""
    delta = ts - time.time()
    if abs(delta) >= 5400:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"in {span(delta)}" if delta > 0 else f"{span(-delta)} ago"


def span(seconds: float) -> str:
    """A duration in its largest unit: 42s, 5m, 17h, 3d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 1.5 or (unit == "m" and seconds >= 90):
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def clock(ts: float, zone: dt.tzinfo = dt.UTC) -> str:
    """A time for people, to the second, in ``zone`` (named when not UTC)."""
    moment = dt.datetime.fromtimestamp(ts, zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + ("" if zone is dt.UTC else f" {moment:%Z}")


def text(value: object) -> Text:
    """A cell holding data as it is: brackets in a reason or a task name are not markup."""
    return Text("" if value is None else str(value))


_FOLDED = 8  # the least width of a column that folds (its header's, if shorter)


def table(
    title: str, ids: Iterable[str], columns: Sequence[str], *, whole: Sequence[str] = ()
) -> Table:
    """A table whose first column holds ids: never wrapped nor cut (people copy them into
    the next command); ``ids`` sizes it. The columns in ``whole`` (short values, such as
    times) wrap only at their spaces, and only where the table would not fit otherwise; the
    others fold, down to their header's width at most ``_FOLDED`` where all of that fits the
    terminal. (Times kept whole squeezed another column to nothing, header and all: the
    schedule column at 80 columns; least widths that do not fit push the last columns off a
    narrow terminal instead.)"""
    widest = max((len(i) for i in ids), default=2)
    least = {n: min(len(n), _FOLDED) for n in columns[1:] if n not in whole}
    needed = widest + sum(least.values()) + sum(len(n) for n in whole) + 3 * len(columns) + 1
    if needed + 4 > console().width:  # Rich then cuts every column alike, as it can
        least = {}
    grid = Table(title=title)
    grid.add_column(columns[0], no_wrap=True, min_width=widest)
    for name in columns[1:]:
        grid.add_column(name, overflow="fold", min_width=least.get(name))
    return grid


def counts_table(title: str, names: Iterable[str], columns: Sequence[str]) -> Table:
    """A table of a name and numbers: the names (queues, which people type into the next
    command) whole, the numbers aligned right; headers fold when the terminal is narrow."""
    grid = Table(title=title)
    grid.add_column(columns[0], no_wrap=True, min_width=max(map(len, names), default=5))
    for name in columns[1:]:
        grid.add_column(Text(name, justify="left"), justify="right", overflow="fold")
    return grid
