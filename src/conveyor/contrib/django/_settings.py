"""``settings.CONVEYOR``: the project's Conveyor app, and the modules a worker imports.

Every key but ``MIDDLEWARE`` and ``IMPORTS`` is an argument of ``Conveyor(...)``, spelt in
capitals as Django settings are. The app is made once per process (the app config keeps
it): a change of the setting afterwards (``override_settings``) does not reach it, as the
tasks registered with ``@get_app().task`` belong to the app they were defined with.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from django.apps import apps
from django.conf import settings
from django.utils.module_loading import autodiscover_modules, import_string

from ..._app import Conveyor
from ..._checks import names
from ..._errors import ConfigurationError, ConveyorError
from ...middleware import Middleware
from ._connections import DatabaseConnections

# settings.CONVEYOR key -> the argument of Conveyor(...) it sets
ARGUMENTS = {
    "URL": "url",
    "STORE": "store",
    "TRUST": "trust",
    "SERIALIZER": "serializer",
    "SECRET": "secret",
    "PREFIX": "prefix",
    "MAX_PAYLOAD": "max_payload",
    "MAX_RESULT": "max_result",
    "EVENTS": "events",
    "EVENTS_KEPT": "events_kept",
}
KEYS = (*ARGUMENTS, "MIDDLEWARE", "IMPORTS")
APP_LABEL = "conveyor"


def get_app() -> Conveyor:
    """The project's ``Conveyor`` app, made from ``settings.CONVEYOR``: the app Django tasks
    are sent with, and the one to define Conveyor's own tasks on
    (``app = get_app()``, then ``@app.task``, ``@app.periodic``, ``app.enqueue``...)."""
    try:
        config = apps.get_app_config(APP_LABEL)
    except LookupError:
        raise ConfigurationError(
            'conveyor.contrib.django is not installed: add "conveyor.contrib.django" to '
            "INSTALLED_APPS"
        ) from None
    app: Conveyor = config.conveyor
    return app


def conveyor_settings() -> Mapping[str, Any]:
    """``settings.CONVEYOR`` (empty when not set), its keys checked."""
    found = getattr(settings, "CONVEYOR", None)
    if found is None:
        return {}
    if not isinstance(found, Mapping):
        raise ConfigurationError(
            f"settings.CONVEYOR is a dict of settings, not {type(found).__name__}: write "
            'CONVEYOR = {"URL": "redis://localhost:6379/0"}'
        )
    unknown = sorted(str(k) for k in found if k not in KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) in settings.CONVEYOR: {', '.join(unknown)}; the keys are "
            + ", ".join(KEYS)
        )
    return found


def build_app() -> Conveyor:
    """A ``Conveyor`` made from ``settings.CONVEYOR``, ``DatabaseConnections`` first among
    its middleware (so its ``after_run`` runs last, once the others are done with a job)."""
    config = conveyor_settings()
    arguments = {ARGUMENTS[key]: value for key, value in config.items() if key in ARGUMENTS}
    middleware = [DatabaseConnections(), *_middleware(config.get("MIDDLEWARE", ()))]
    try:
        return Conveyor(middleware=middleware, **arguments)
    except ConveyorError as exc:
        raise ConfigurationError(f"settings.CONVEYOR: {exc}") from None


def _middleware(entries: Any) -> list[Middleware]:
    example = 'CONVEYOR = {"MIDDLEWARE": ["myproject.jobs.Audit", PrometheusMiddleware()]}'
    if isinstance(entries, str) or not isinstance(entries, list | tuple):
        raise ConfigurationError(
            f"settings.CONVEYOR['MIDDLEWARE'] is a list, not {entries!r}: write {example}"
        )
    found: list[Middleware] = []
    for entry in entries:
        item = entry
        if isinstance(entry, str):
            try:
                item = import_string(entry)
            except ImportError as exc:
                raise ConfigurationError(
                    f"settings.CONVEYOR['MIDDLEWARE']: cannot import {entry!r} ({exc})"
                ) from None
            if isinstance(item, type):
                item = item()
        if not isinstance(item, Middleware):
            raise ConfigurationError(
                f"settings.CONVEYOR['MIDDLEWARE']: {entry!r} is not a conveyor.Middleware "
                f"(a subclass's dotted path, or an instance): write {example}"
            )
        found.append(item)
    return found


def load_tasks() -> None:
    """Import every installed app's ``tasks`` module (where it has one) and the modules of
    ``settings.CONVEYOR["IMPORTS"]``: the tasks they define register with the app, so a
    worker knows them before its first job."""
    autodiscover_modules("tasks")
    modules = conveyor_settings().get("IMPORTS", ())
    try:
        modules = names("IMPORTS", modules, '["myproject.reports"]')
    except ConveyorError as exc:
        raise ConfigurationError(f"settings.CONVEYOR: {exc}") from None
    for module in modules:
        importlib.import_module(module)
