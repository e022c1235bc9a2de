"""From a task name in a payload to the function to run, without importing untrusted code.

A registered task (``@app.task``) always runs. A ``module:qualname`` callable (RQ-style
``app.enqueue(fn)``) runs only if its module's top-level package is trusted: the package of
the module the worker was started with, ``Conveyor(trust=[...])`` and ``--trust``. The check
is on the *name* before anything is imported, and again on the object found, so
``myapp.tasks:os.system`` (``os`` imported into a trusted module) is refused too.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._checks import packages
from .._errors import ConveyorError, UntrustedTask
from .._task import Task

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")
_QUALNAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")


class UnknownTask(ConveyorError):
    """A payload named a task this worker does not have."""


def top_package(module: str) -> str:
    return module.partition(":")[0].split(".")[0]


def trusted_packages(module: str | None, *groups: Iterable[str]) -> frozenset[str]:
    """The top-level packages a worker trusts; entries may be comma lists or dotted names.

    The package of the module a worker starts with is trusted, but for Conveyor's own (the
    demo's tasks, a framework integration's entry point): those register their tasks, and
    nothing else of Conveyor is a job to run by name."""
    found = {top_package(module)} if module and top_package(module) != "conveyor" else set()
    for group in groups:
        for entry in packages("trust", group, "trust=['myapp'] (--trust myapp)"):
            found.update(top_package(p.strip()) for p in entry.split(",") if p.strip())
    return frozenset(found)


def _dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


class Resolved:
    __slots__ = ("fn", "is_async", "task")

    def __init__(
        self,
        fn: Callable[..., Any],
        is_async: bool | None = None,
        task: Task[Any, Any] | None = None,
    ) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn) if is_async is None else is_async
        self.task = task  # the registered task it was found for (None: imported by name)


class Resolver:
    """Names to functions; caches what it found. Raises ``UnknownTask`` or ``UntrustedTask``
    whose message is the dead-letter reason."""

    def __init__(self, registry: Mapping[str, Task[Any, Any]], trusted: frozenset[str]) -> None:
        self._registry = registry
        self.trusted = trusted
        self._cache: dict[str, Resolved] = {}
        self._registered: dict[str, Resolved] = {}  # one per registered task, not one per job

    def resolve(self, name: str) -> Resolved:
        task = self._registry.get(name)
        if task is not None:
            hit = self._registered.get(name)
            if hit is None or hit.task is not task:  # first seen, or registered anew since
                hit = self._registered[name] = Resolved(task.fn, task.is_async, task)
            return hit
        hit = self._cache.get(name)
        if hit is None:
            hit = self._cache[name] = Resolved(self._import(name))
        return hit

    def _import(self, name: str) -> Callable[..., Any]:
        module, sep, qualname = name.partition(":")
        if not sep or not _MODULE.match(module) or not _QUALNAME.match(qualname):
            raise UnknownTask(
                f"unknown task {name!r}: no task is registered under that name; start the "
                "worker with the module that defines it (conveyor worker MODULE)"
            )
        if any(_dunder(part) for part in module.split(".")):
            # Importing ``myapp.__main__`` runs the package's entry point (a server, a CLI
            # loop) in the consumer's thread; ``myapp.__init__`` runs the package again. No
            # task lives in them. (``myapp._private`` is a task module like any other.)
            raise UntrustedTask(
                f"untrusted callable {name!r}: dunder modules are refused ({module} is not "
                "imported)"
            )
        if top_package(module) not in self.trusted:
            raise UntrustedTask(self._untrusted(name, module))
        if any(part.startswith("__") for part in qualname.split(".")):
            raise UntrustedTask(f"untrusted callable {name!r}: dunder attributes are refused")
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise UnknownTask(f"unknown task {name!r}: {exc}") from exc
        if isinstance(obj, Task):
            obj = obj.fn
        elif (registered := self._registry.get(name)) is not None:
            # Importing the module registered the task (a framework integration's tasks,
            # e.g. Django's, register themselves when they are defined).
            return registered.fn
        if not callable(obj):
            kind = type(obj).__name__
            raise UnknownTask(f"unknown task {name!r}: it names a {kind}, not a function")
        home = getattr(obj, "__module__", None)
        if not isinstance(home, str) or not home:
            # A built-in object's method (``myapp.tasks:os.sys.stderr.write``): whose code
            # it is cannot be told, so it is no package's.
            raise UntrustedTask(
                f"untrusted callable {name!r}: it names a {type(obj).__name__} that has no "
                "module (__module__ is not set), so no trusted package can vouch for it; "
                "enqueue a function defined in a module of a trusted package"
            )
        if top_package(home) not in self.trusted:
            # e.g. ``myapp.tasks:os.system`` when myapp.tasks did ``import os``
            raise UntrustedTask(self._untrusted(name, home))
        return obj  # type: ignore[no-any-return]

    def _untrusted(self, name: str, module: str) -> str:
        package = top_package(module)
        trusted = ", ".join(sorted(self.trusted)) or "none"
        reason = (
            f"untrusted callable {name!r}: {package!r} is not a trusted package "
            f"(trusted: {trusted})"
        )
        if package in sys.stdlib_module_names or package == "builtins":
            return reason
        return f"{reason}; if it is your code, start the worker with --trust {package}"
