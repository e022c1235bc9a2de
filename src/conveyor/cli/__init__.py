"""The ``conveyor`` command: one entry point, one module per command group.

A command's module is imported when that command runs (or when ``--help`` lists them all):
``conveyor worker`` loads neither rich nor the other commands, and reaches its first job
sooner for it. A plain ``conveyor worker`` command line (a Procfile's) is read without
click (``_fast``); everything else, help and errors included, goes through click
(``_group``).
"""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING, Any

from . import _deferred

if TYPE_CHECKING:
    from .._inspect import redact as redact
    from ._group import COMMANDS as COMMANDS
    from ._group import cli as cli
    from ._group import run as run


def main() -> None:
    # The command's own imports (Conveyor, its worker, asyncio, ...) make ~36,000 objects
    # that live as long as the process, and the collector, left on, walks them over and
    # over while they are made (~3 % of a worker's start). It is off while they are
    # imported; then they are frozen (``gc.freeze``: never walked again) and it is on before
    # any code of the app's runs. What those imports left as garbage (~600 objects: classes
    # that ``dataclass(slots=True)`` replaced, and the like) is kept.
    gc.disable()
    try:
        _deferred.defer_all()  # before a command imports redis-py
        from . import _fast
    finally:
        gc.freeze()
        gc.enable()

    if (found := _fast.worker_command(sys.argv[1:])) is not None:
        _fast.run(found)
    from ._group import cli, run

    run(cli, "conveyor")


def __getattr__(name: str) -> Any:
    """``cli``, ``run`` and ``COMMANDS`` (the click group and how it runs) and ``redact``,
    imported on first use."""
    if name in ("cli", "run", "COMMANDS"):
        from . import _group

        return getattr(_group, name)
    if name == "redact":
        from .._inspect import redact

        return redact
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
