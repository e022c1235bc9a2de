"""The Lua scripts, read from the ``.lua`` files beside this module.

Each script is ``common.lua`` (shared helpers and argument conventions) followed by its own
file. redis-py ``Script`` objects run them by SHA and reload them on ``NOSCRIPT`` (a restarted
or failed-over server), also inside pipelines.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

NAMES = ("enqueue", "fetch", "renew", "finish", "release", "promote", "progress", "cancel",
         "requeue", "purge", "forget")


@cache
def source(name: str) -> str:
    folder = resources.files(__package__ or "conveyor.brokers.redis")
    common = folder.joinpath("common.lua").read_text(encoding="utf-8")
    return common + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The registered scripts of one client (sync or asyncio), by name."""

    def __init__(self, client: Any) -> None:
        self._scripts = {name: client.register_script(source(name)) for name in NAMES}

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]
