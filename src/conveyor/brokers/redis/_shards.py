"""A sharded Redis prefix's pure parts (``_sharded``): ids and their shard, placement by
power of two choices, the shards' hash tags, event cursors over several logs, merges."""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from random import Random
from typing import Any, TypeVar

import msgspec

from ..._backoff import RANDOM
from ..._errors import ConfigurationError
from ..._message import new_job_id
from ._cluster import slot_of
from ._core import text

MAX_SHARDS = 256  # a look calls every shard: S calls (docs/cluster.md)
_SUFFIX = re.compile(r"\.s(\d{1,4})$")
_TAG_TRIES = 100_000
T = TypeVar("T")


def shard_of(job_id: str, shards: int) -> int:
    """The shard of a job: the suffix ``.s<i>`` its id was minted with (``i < shards``),
    else a stable hash of the id (a user's ``job_id=``, a periodic job's id)."""
    found = _SUFFIX.search(job_id)
    if found is not None and int(found.group(1)) < shards:
        return int(found.group(1))
    return zlib.crc32(job_id.encode()) % shards


def key_shard(key: str, shards: int) -> int:
    """The shard of every job with the unique key ``key``."""
    return zlib.crc32(key.encode()) % shards


def mint(shard: int) -> str:
    """A fresh time-sorted id on ``shard``."""
    return f"{new_job_id()}.s{shard}"


def pick(loads: Sequence[int], rng: Random | None = None) -> int:
    """Power of two choices: the less loaded of two random shards (either on a tie)."""
    if len(loads) == 1:
        return 0
    a, b = (rng or RANDOM).sample(range(len(loads)), 2)
    return a if loads[a] <= loads[b] else b


def choose_tags(prefix: str, shards: int, masters: Sequence[Callable[[int], bool]]) -> list[str]:
    """The hash tags (without braces) of the shards of ``prefix``: shard ``i`` gets
    ``P~i``, or ``P~i.n`` for the first n whose slot ``masters[i % M]`` serves (each
    ``masters[m](slot)`` says whether master m serves that slot); any tag with no masters
    (one server)."""
    tags = []
    for i in range(shards):
        names = itertools.chain(
            [f"{prefix}~{i}"], (f"{prefix}~{i}.{n}" for n in itertools.count(1))
        )
        if not masters:
            tags.append(next(names))
            continue
        serves = masters[i % len(masters)]
        for name in itertools.islice(names, _TAG_TRIES):
            if serves(slot_of("{" + name + "}")):
                tags.append(name)
                break
        else:  # pragma: no cover - a master serving no slot
            raise ConfigurationError(f"no tag of shard {i} falls on a master of the cluster")
    return tags


def masters_of(slots: Any) -> list[Callable[[int], bool]]:
    """From a ``CLUSTER SLOTS`` answer, each master (by address, in order) as a test of
    whether it serves a slot."""
    ranges: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for start, end, master, *_ in slots:
        address = (text(master[0]), int(master[1]))
        ranges.setdefault(address, []).append((int(start), int(end)))
    return [_serves(r) for _, r in sorted(ranges.items())]


def _serves(ranges: list[tuple[int, int]]) -> Callable[[int], bool]:
    return lambda slot: any(lo <= slot <= hi for lo, hi in ranges)


class Layout(msgspec.Struct, frozen=True):
    """What ``{P}:shards`` holds."""

    shards: int
    tags: list[str]


def join_cursor(places: Sequence[int]) -> str:
    return ".".join(map(str, places))


def split_cursor(cursor: str | None, logs: int) -> list[int]:
    """The place in each of ``logs`` event logs a cursor names (None: before the first)."""
    if cursor is None:
        return [0] * logs
    parts = cursor.split(".") if isinstance(cursor, str) else []
    if len(parts) != logs or not all(p.isdigit() for p in parts):
        raise ConfigurationError(
            f"bad event cursor {cursor!r}: this prefix is sharded over {logs - 1} shards, whose "
            f"cursors are {logs} numbers joined by '.' (a cursor of an unsharded prefix or of "
            "another layout does not apply); pass one read_events or events_tail returned on "
            "this prefix, or None to read from the oldest kept"
        )
    return [int(p) for p in parts]


def round_robin(pages: Sequence[Sequence[T]]) -> Iterator[tuple[int, T]]:
    """(log, item): one item of each page in turn, each page's order kept."""
    its = [iter(p) for p in pages]
    live = list(range(len(its)))
    while live:
        for i in list(live):
            item = next(its[i], None)
            if item is None:
                live.remove(i)
            else:
                yield i, item
