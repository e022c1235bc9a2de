"""Integrations with other libraries, each a ``conveyor.Middleware`` in a module of its own:

* ``conveyor.contrib.prometheus``: metrics and a ``/metrics`` endpoint (``conveyor[prometheus]``)
* ``conveyor.contrib.opentelemetry``: traces from ``delay`` to the run (``conveyor[opentelemetry]``)
* ``conveyor.contrib.sentry``: failed and dead-lettered jobs reported (``conveyor[sentry]``)

Conveyor itself needs none of these libraries: a module here imports its library only when
it is used, and says which extra to install when it is missing. Nothing outside
``contrib/`` imports ``contrib/``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .._errors import ConfigurationError


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
