"""Modules the ``conveyor`` command's process loads on first use rather than when imported.

redis-py imports ``importlib.metadata`` when it is imported (and with it ``email``,
``zipfile``, ``pathlib``, ``csv``, ...: ~17 ms of CPU, a tenth of a worker's start) for one
call, reading its own version for ``CLIENT SETINFO``, which Conveyor's connections never
make: they name the version themselves (``driver_info``). In the command's own process,
before anything imports redis-py, ``importlib.metadata`` is made a module whose code runs
when one of its names is first used: whoever uses it gets it as always (``conveyor
--version`` does), and a worker that does not never loads it. A user's process that
imports Conveyor as a library is left as it is.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

DEFERRED = ("importlib.metadata",)


class _OnFirstUse(types.ModuleType):
    """A module whose code has not run yet: the import system's own attributes
    (``__spec__``, ``__name__``, ...) are there, so importing it again does not load it;
    the first other name looked up runs its code (once, under a lock: a thread that asks
    meanwhile waits) and is then looked up in the loaded module. A package's ``__path__``
    is one of those names: importing one of its modules loads the package first, as an
    import always does."""

    def __getattr__(self, name: str) -> Any:
        spec = self.__spec__
        assert spec is not None and spec.loader is not None
        with _LOCK:
            if type(self) is _OnFirstUse:
                if spec.name in _LOADING:  # its own code looks up a name not defined yet
                    raise AttributeError(f"partially loaded module {spec.name!r} has no {name!r}")
                _LOADING.add(spec.name)
                if spec.submodule_search_locations is not None:
                    self.__path__ = spec.submodule_search_locations
                try:
                    spec.loader.exec_module(self)
                except BaseException:  # as a failed import: the next one tries afresh
                    sys.modules.pop(spec.name, None)
                    parent, _, child = spec.name.rpartition(".")
                    if parent in sys.modules:
                        vars(sys.modules[parent]).pop(child, None)
                    raise
                finally:
                    _LOADING.discard(spec.name)
                object.__setattr__(self, "__class__", types.ModuleType)
        return getattr(self, name)


_LOCK = threading.RLock()
_LOADING: set[str] = set()


def defer(name: str) -> None:
    """Make ``name`` (a module not imported yet, whose parent package is) load on first use;
    nothing happens if it is imported already or cannot be found."""
    parent, _, child = name.rpartition(".")
    if name in sys.modules or (parent and parent not in sys.modules):
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    vars(module).pop("__path__", None)
    module.__class__ = _OnFirstUse
    sys.modules[name] = module
    if parent:  # ``from importlib import metadata`` takes the attribute when it is there
        setattr(sys.modules[parent], child, module)


def defer_all() -> None:
    for name in DEFERRED:
        defer(name)
