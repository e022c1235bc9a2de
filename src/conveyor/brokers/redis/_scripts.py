"""The Lua scripts, read from the ``.lua`` files beside this module.

Each script is ``common.lua`` (shared helpers and argument conventions) followed by its own
file, with only the helpers it uses: the head of ``common.lua`` (the argument conventions,
up to its first ``local function``), unless the script takes arguments of its own
(``OWN_ARGS``), then each top-level definition (``local
function NAME`` or ``local NAME =``, with the comment lines above it) that the script, or a
helper already taken, names. Defining a closure the script never calls costs the server
time on every call (all of common.lua's helpers: about 3 µs per call, as much as a small
script's own work). Before common.lua come ``CONSTANTS``, the values the scripts share
with the Python side (the cancelled record's TTL and reasons), defined in
``brokers._base``. redis-py ``Script`` objects run them by SHA and reload them on
``NOSCRIPT`` (a restarted or failed-over server), also inside pipelines.
"""

from __future__ import annotations

import pkgutil
import re
from functools import cache
from typing import Any

from .._base import CANCELLED_PENDING, CANCELLED_TTL, CANCELLED_WORKER_STOPPED

NAMES = (
    "enqueue",
    "enqueue_one",
    "fetch",
    "renew",
    "finish",
    "release",
    "promote",
    "progress",
    "cancel",
    "requeue",
    "purge",
    "delete",
    "forget",
    "queued",
    "ended",
    "watch",
    "publish",
    "heartbeat",
    "epoch",
    "resume",
)

_DEFINES = re.compile(r"local (?:function )?([A-Za-z_]\w*)")


@cache  # one common.lua, cut once per process for all the scripts built from it
def _blocks(common: str) -> tuple[str, list[tuple[str, str, frozenset[str]]]]:
    """common.lua as its head and its top-level definitions, (name, text, names it uses),
    in order."""
    lines = common.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("local function "))
    while first > 0 and lines[first - 1].startswith("--"):
        first -= 1
    head, blocks = "".join(lines[:first]), []
    start = first
    for i in range(first, len(lines) + 1):
        if i < len(lines) and not (lines[i].startswith("local ") and i > start):
            continue
        # A definition starts here: the comment lines just above belong to it.
        cut = i
        while i < len(lines) and cut > start and lines[cut - 1].startswith("--"):
            cut -= 1
        text = "".join(lines[start:cut])
        found = _DEFINES.match(text.lstrip("-\n ").split("\n", 1)[0]) or _DEFINES.search(text)
        if text.strip():
            blocks.append((found.group(1) if found else "", text, frozenset(_names(text))))
        start = cut
    return head, blocks


def _names(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", re.sub(r"--[^\n]*", "", text)))


def prelude(body: str, common: str, *, head: bool = True) -> str:
    """The part of ``common`` that ``body`` needs: its head (unless ``head`` is false) and
    the definitions it uses, directly or through another one, in their original order."""
    start, blocks = _blocks(common)
    wanted = _names(body)
    taken = [False] * len(blocks)
    grew = True
    while grew:
        grew = False
        for i in reversed(range(len(blocks))):  # a helper names only those above it
            if not taken[i] and blocks[i][0] in wanted:
                taken[i] = grew = True
                wanted |= blocks[i][2]
    used = "".join(text for (_, text, _), used in zip(blocks, taken, strict=True) if used)
    return start + used if head else used


def _lua(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# How long a job's done list outlives the push that ends its wait (common.lua notify; the
# asyncio waits push one back, _async).
NOTIFY_TTL_MS = 300_000

# Values the scripts share with the Python side, defined once there (brokers/_base.py, and
# above): put before common.lua, so its head (which every script carries) defines them.
CONSTANTS = (
    f"local CANCELLED_TTL_MS = {round(CANCELLED_TTL * 1000)}\n"
    f"local NOTIFY_TTL_MS = {NOTIFY_TTL_MS}\n"
    f"local CANCELLED_PENDING = {_lua(CANCELLED_PENDING)}\n"
    f"local CANCELLED_WORKER_STOPPED = {_lua(CANCELLED_WORKER_STOPPED)}\n"
)


def _read(name: str) -> str:
    # pkgutil, not importlib.resources: both read through the package's loader (a zipped
    # install too), and importlib.resources imports pathlib, tempfile, shutil and zipfile
    # (~10 ms of a worker's start).
    data = pkgutil.get_data(__package__ or "conveyor.brokers.redis", name)
    assert data is not None  # None only for a loader that cannot read files
    return data.decode("utf-8")


@cache
def _common() -> str:
    return CONSTANTS + _read("common.lua")


# Scripts that take arguments of their own, not common.lua's head (ARGV[1..4]): they get
# only the definitions they name, none of which may read the head. Each argument costs the
# server ~0.3 µs of every call: enqueue_one.lua (every `task.delay()`) sends six or eight.
OWN_ARGS = frozenset({"enqueue_one"})


@cache
def source(name: str) -> str:
    body = _read(f"{name}.lua")
    return prelude(body, _common(), head=name not in OWN_ARGS) + "\n" + body


class Scripts:
    """The registered scripts of one client (sync or asyncio), by name, each built on first
    use: a producer that only enqueues builds one script, not all of them (~0.6 ms each)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._scripts: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        found = self._scripts.get(name)
        if found is None:
            if name not in NAMES:
                raise KeyError(name)
            # Two threads may build it at once: the same script, and one of them is kept.
            found = self._scripts.setdefault(name, self._client.register_script(source(name)))
        return found
