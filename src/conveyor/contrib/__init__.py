"""Integrations with other libraries, each a ``conveyor.Middleware`` in a module of its own:

* ``conveyor.contrib.prometheus``: metrics and a ``/metrics`` endpoint (``conveyor[prometheus]``)
* ``conveyor.contrib.opentelemetry``: traces from ``delay`` to the run (``conveyor[opentelemetry]``)
* ``conveyor.contrib.sentry``: failed and dead-lettered jobs reported (``conveyor[sentry]``)
* ``conveyor.contrib.flask``: ``FlaskConveyor``, a Flask extension whose tasks run inside the
  app context, and ``flask conveyor worker`` (``conveyor[flask]``)

and a framework's, a package of its own:

* ``conveyor.contrib.django``: a Django app, the backend of Django's Tasks framework and
  ``manage.py conveyor_worker`` (``conveyor[django]``; docs/django.md)

Conveyor itself needs none of these libraries: a module here imports its library only when
it is used, and says which extra to install when it is missing. Nothing outside
``contrib/`` imports ``contrib/``.

A task's exception reaches the hooks as the task raised it, and its own code may raise as
it is read (``__str__``, a metaclass, a ``__class__`` property): a library that reads it
gets ``readable`` checked first, and ``described`` (the worker's bounded description, a
``TaskFailed``) when it fails, or when reading it raises anyway.
"""

from __future__ import annotations

import asyncio
import importlib
from types import ModuleType, NoneType, TracebackType

from .._errors import ConfigurationError, TaskFailed
from .._values import _utf8
from ..worker._describe import Interrupted, describe

# The worker's own interruptions of a run (a cancel, a shutdown): they pass through the
# reading of a task's exception. Anything else that reading raises (its __str__, a
# metaclass's name lookups, a __class__ property run the exception's own code, and may
# raise anything: SystemExit, or the exception's own BaseException type) is its doing.
INTERRUPTIONS: tuple[type[BaseException], ...] = (Interrupted, asyncio.CancelledError)


def require(module: str, extra: str, *, user: str) -> ModuleType:
    """Import ``module`` for ``user``, or raise a ``ConfigurationError`` naming the extra
    that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"{user} needs the {module.partition('.')[0]} package, which is not installed "
            f"({exc}): pip install 'conveyor[{extra}]'"
        ) from exc


_TRACEBACKS = (TracebackType, NoneType)


def described(error: BaseException, job_id: str = "") -> TaskFailed:
    """``error`` as the worker describes it (type, message, traceback, each bounded), for a
    library that failed to read the exception itself. Never raises."""
    remote = describe(error)[0]
    return TaskFailed(remote.type, remote.message, remote.traceback, job_id)


def readable(error: BaseException, depth: int = 16) -> bool:
    """Whether a library can read ``error``, and the exceptions chained to it, the ordinary
    way: its ``__class__`` is its type, whose module and names are strings, ``str()`` gives a
    string of valid Unicode, and ``__traceback__`` can be read, none of it raising. An
    exception that fails this is reported as ``described`` instead. Never raises (but not
    the worker's interruptions)."""
    try:
        e: BaseException | None = error
        for _ in range(depth):
            if e is None:
                return True
            kind = type(e)
            if e.__class__ is not kind or type(e.__traceback__) not in _TRACEBACKS:
                return False  # (either may be a property that runs its code)
            if not all(type(n) is str for n in (kind.__module__, kind.__name__, kind.__qualname__)):
                return False
            text = str(e)
            if type(text) is not str or not (text.isascii() or _utf8(text)):
                return False
            e = e.__cause__ if e.__cause__ is not None or e.__suppress_context__ else e.__context__
        return e is None
    except BaseException as exc:
        if issubclass(type(exc), INTERRUPTIONS):
            raise
        return False
