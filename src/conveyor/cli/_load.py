"""Finding the application a command works on."""

from __future__ import annotations

import importlib
import os
import sys

import click

from .._app import Conveyor


def load_app(spec: str) -> tuple[Conveyor, str]:
    """Import ``module`` or ``module:attribute`` and return its ``Conveyor`` and module name.

    With a bare module, the attribute ``app`` is used if it is a Conveyor, else the only
    Conveyor instance defined in the module.
    """
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current folder is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(
            f"cannot import {module_name!r}: {exc}. Run from the folder that contains it, "
            "or set PYTHONPATH."
        ) from exc
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, Conveyor):
            raise click.UsageError(f"{spec!r} is not a Conveyor application")
        return app, module_name
    candidate = getattr(module, "app", None)
    if isinstance(candidate, Conveyor):
        return candidate, module_name
    apps = [v for v in vars(module).values() if isinstance(v, Conveyor)]
    if len(apps) != 1:
        raise click.UsageError(
            f"found {len(apps)} Conveyor applications in {module_name!r}; "
            f"name one as {module_name}:NAME"
        )
    return apps[0], module_name


def app_for(spec: str | None, url: str | None) -> Conveyor:
    """The app of ``-A module`` if given, else one on ``--url`` / CONVEYOR_URL / default."""
    if spec:
        app, _ = load_app(spec)
        return app
    return Conveyor(url)
