"""Modules the ``conveyor`` command's process loads on first use rather than when imported.

redis-py imports ``importlib.metadata`` when it is imported (and with it ``email``,
``zipfile``, ``pathlib``, ``csv``, ...: ~17 ms of CPU, a tenth of a worker's start) for one
call, reading its own version for ``CLIENT SETINFO``, which Conveyor's connections never
make: they name the version themselves (``driver_info``). In the command's own process,
before anything imports redis-py, ``importlib.metadata`` is made a module whose code runs
when one of its names is first used: whoever uses it gets it as always (``conveyor
--version`` does), and a worker that does not never loads it.

``import redis`` also imports every client redis-py has: the cluster client, the sentinels',
the asyncio ones, keyspace notifications (15 of its 62 modules, ~10 ms of CPU on a quiet
machine, that a worker on ``redis://`` never uses). Its packages' ``__init__`` modules only
gather names from their modules, so in the command's process ``redis``, ``redis.asyncio``
and ``redis.commands`` are made packages whose names are imported from those modules when
first used (``redis.Redis`` imports ``redis.client``), and whose ``__init__`` runs only for
a name it does not simply re-export.

A user's process that imports Conveyor as a library is left as it is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
import types
from typing import Any

DEFERRED = ("importlib.metadata",)
PACKAGES = ("redis", "redis.asyncio", "redis.commands")


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
                    _forget(spec.name)
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


class _Reexports(types.ModuleType):
    """A package whose ``__init__`` has not run. Its modules import as always (its
    ``__path__`` is set); a name its ``__init__`` takes from a module of the same
    distribution (``from redis.client import Redis``) or sets to a literal
    (``__version__``) is taken from there when first looked up, and so is a module of the
    package. Any other name, and ``dir()``, run the ``__init__`` (once, under the lock), as
    importing the package would have. Only the ``__init__``'s own run holds the lock: a
    thread that imports a module of the package meanwhile does not wait for it, and one
    that looks up a re-exported name gets it as before; for any other name it waits until
    the ``__init__`` is done (as ``import`` would), and the ``__init__``'s own code finds
    only the names bound so far (as in a package being imported)."""

    def __getattr__(self, name: str) -> Any:
        spec = self.__spec__
        assert spec is not None
        table = _TABLES.get(spec.name)
        if table is not None and _RUNNING.get(spec.name) != threading.get_ident():
            if name in table:
                value = _resolve(spec.name, table[name])
                setattr(self, name, value)
                return value
            module = f"{spec.name}.{name}"
            if name[:2] != "__" and importlib.util.find_spec(module):
                return _import(module)
        _Reexports._run(self)  # not self._run: another thread may have run it meanwhile
        return object.__getattribute__(self, name)

    def __dir__(self) -> list[str]:
        _Reexports._run(self)
        return sorted(vars(self))

    def _run(self) -> None:
        spec = self.__spec__
        assert spec is not None and spec.loader is not None
        with _LOCK:
            if type(self) is not _Reexports or spec.name in _RUNNING:  # run, or running here
                return
            _RUNNING[spec.name] = threading.get_ident()
            # A name bound before is what the ``__init__`` binds (looked up), a module of
            # the package (the import system's, which the ``__init__`` may bind to
            # something else), or what a program assigned (``redis.Redis = Mine``): that
            # stays, as after an import.
            before = {
                name: value
                for name, value in vars(self).items()
                if name[:2] != "__" and sys.modules.get(f"{spec.name}.{name}") is not value
            }
            try:
                spec.loader.exec_module(self)
                vars(self).update(before)
            except BaseException:  # as a failed import: the next one tries afresh
                _forget(spec.name)
                raise
            finally:
                object.__setattr__(self, "__class__", types.ModuleType)
                del _TABLES[spec.name], _RUNNING[spec.name]


_TABLES: dict[str, dict[str, tuple[str | None, Any]]] = {}
_RUNNING: dict[str, int] = {}  # a package whose ``__init__`` runs: the thread running it


def _forget(name: str) -> None:
    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        vars(sys.modules[parent]).pop(child, None)


def _resolve(package: str, source: tuple[str | None, Any]) -> Any:
    """A re-exported name's value: a literal, a module's attribute, or a module."""
    module, attr = source
    if module is None:
        return attr
    if module != package:
        found = _import(module)
        if hasattr(found, attr):
            return getattr(found, attr)
    return _import(f"{module}.{attr}")  # ``from package import module``


def _import(name: str) -> types.ModuleType:
    """``import name`` (the statement's way, which ``-X importtime`` times, not
    ``importlib.import_module``'s), and the module itself."""
    __import__(name)
    return sys.modules[name]


def _reexports(package: str, source: str) -> dict[str, tuple[str | None, Any]] | None:
    """What ``package``'s ``__init__`` binds without running code of its own: each name
    it imports from a module of the same distribution (``redis.*``), and each name it
    sets to a literal. None when the ``__init__`` does anything but import, define
    functions and classes and assign, or imports ``*``: it must then run as imported."""
    import ast

    own = package.partition(".")[0]
    table: dict[str, tuple[str | None, Any]] = {}
    bound: set[str] = set()
    for node in ast.parse(source).body:
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            module = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.append(alias.asname or alias.name)
                if module == own or module.startswith(own + "."):
                    table[names[-1]] = (module, alias.name)
        elif isinstance(node, ast.Import):
            names = [(a.asname or a.name).partition(".")[0] for a in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            with contextlib.suppress(ValueError, TypeError):  # computed: the code says
                value = ast.literal_eval(node.value)
                table.update((name, (None, value)) for name in names)
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            return None  # code runs: a docstring is the only expression it may hold
        for name in names:
            if name in bound:  # bound twice: which binding stays is the code's to say
                table.pop(name, None)
            bound.add(name)
    return table


def defer_package(name: str) -> None:
    """Leave ``name``'s ``__init__`` unrun until a name it defines is used (see
    ``_Reexports``); nothing happens if it is imported already, or when its ``__init__``
    cannot be read as re-exports."""
    parent, _, child = name.rpartition(".")
    if name in sys.modules or (parent and parent not in sys.modules):
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    try:
        source = spec.loader.get_source(name)  # type: ignore[attr-defined]
        table = _reexports(name, source) if source is not None else None
    except (AttributeError, ImportError, SyntaxError, ValueError):  # no source to read
        return
    if table is None:
        return
    module = importlib.util.module_from_spec(spec)
    _TABLES[name] = table
    module.__class__ = _Reexports
    sys.modules[name] = module
    if parent:
        setattr(sys.modules[parent], child, module)


def defer_all() -> None:
    for name in DEFERRED:
        defer(name)
    for name in PACKAGES:
        defer_package(name)
