"""``settings.CONVEYOR``: the project's Conveyor app, and the modules a worker imports.

Every key but ``MIDDLEWARE`` and ``IMPORTS`` is an argument of ``Conveyor(...)``, spelt in
capitals as Django settings are. The app is made once per process (the app config keeps
it): a change of the setting afterwards (``override_settings``) does not reach it, as the
tasks registered with ``@get_app().task`` belong to the app they were defined with.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

from django.apps import apps
from django.conf import settings
from django.utils.module_loading import autodiscover_modules, import_string

from ..._app import Conveyor
from ..._checks import names, packages, shown, whole
from ..._errors import ConfigurationError, ConveyorError
from ..._message import validate_queue
from ...brokers import load_adapter
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


def _text(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value != "")


def _passes(check: Callable[[Any], object]) -> Callable[[Any], bool]:
    """Whether a value passes one of the library's own checks (which raise, in its terms)."""

    def good(value: Any) -> bool:
        try:
            check(value)
        except ConveyorError:
            return False
        return True

    return good


_names = _passes(lambda v: names("", v, ""))  # not one str, which would be read as letters
_packages = _passes(lambda v: packages("", v, ""))  # the same, each a Python package name
_prefix = _passes(lambda v: v is None or validate_queue(v))  # a key prefix's rule


def _whole(least: int, most: int = sys.maxsize) -> Callable[[Any], bool]:
    return _passes(lambda v: whole("", v, least, most, ""))


# settings.CONVEYOR key -> (is the value good?, what the key takes, a value to write)
RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "URL": (_text, "the broker's URL, a str", '"redis://localhost:6379/0"'),
    "STORE": (_text, "the record store's URL, a str", '"redis://localhost:6379/0"'),
    "TRUST": (_packages, "a list of Python package names", '["reports"]'),
    "SERIALIZER": (lambda v: v in ("json", "pickle"), "'json' or 'pickle'", '"json"'),
    "SECRET": (
        lambda v: v is None or (isinstance(v, str | bytes) and len(v) > 0),
        "a non-empty str or bytes, the same in every process",
        'os.environ["CONVEYOR_SECRET"]',
    ),
    "PREFIX": (
        _prefix,
        "the broker's key prefix: 1 to 64 letters, digits, '_', '.', '-'",
        '"shop"',
    ),
    "MAX_PAYLOAD": (_whole(1, 2**40), "a size in bytes, a whole number from 1 to 2**40", "2**20"),
    "MAX_RESULT": (_whole(1, 2**40), "a size in bytes, a whole number from 1 to 2**40", "2**20"),
    "EVENTS": (lambda v: isinstance(v, bool), "True or False", "True"),
    "EVENTS_KEPT": (_whole(1), "how many events to keep, a whole number from 1", "10_000"),
    "IMPORTS": (_names, "a list of module names", '["myproject.reports"]'),
}


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
    for key, value in config.items():
        if key in RULES:
            check_setting(key, value)
    _check_together(config)
    arguments = {ARGUMENTS[key]: value for key, value in config.items() if key in ARGUMENTS}
    middleware = [DatabaseConnections(), *_middleware(config.get("MIDDLEWARE", ()))]
    try:
        return Conveyor(middleware=middleware, **arguments)
    except ConveyorError as exc:
        raise ConfigurationError(f"settings.CONVEYOR: {exc}") from None


def check_setting(key: str, value: Any) -> None:
    """One key's value, refused in the setting's own terms (not ``Conveyor(...)``'s, which
    a Django project never wrote); a secret is never shown."""
    good, takes, example = RULES[key]
    if not good(value):
        said = f"of type {type(value).__name__}" if key == "SECRET" else shown(value)
        raise ConfigurationError(
            f"bad settings.CONVEYOR['{key}'] ({said}): it takes {takes}; write "
            f'CONVEYOR = {{..., "{key}": {example}}}'
        )


def _check_together(config: Mapping[str, Any]) -> None:
    if config.get("SERIALIZER") == "pickle" and not config.get("SECRET"):
        raise ConfigurationError(
            "settings.CONVEYOR['SERIALIZER'] is 'pickle', which needs settings.CONVEYOR"
            "['SECRET'] to sign messages (unsigned pickle lets anyone who can write to the "
            'broker run code in your workers): write CONVEYOR = {..., "SECRET": '
            'os.environ["CONVEYOR_SECRET"]}'
        )
    if config.get("URL") is not None:
        try:
            load_adapter(config["URL"])
        except ConveyorError as exc:
            raise ConfigurationError(f"settings.CONVEYOR['URL']: {exc}") from None


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
                _check_made_bare(entry, item)
                item = item()
        if not isinstance(item, Middleware):
            raise ConfigurationError(
                f"settings.CONVEYOR['MIDDLEWARE']: {entry!r} is not a conveyor.Middleware "
                f"(a subclass's dotted path, or an instance): write {example}"
            )
        found.append(item)
    return found


def _check_made_bare(entry: str, cls: type) -> None:
    """A dotted path names a class made without arguments: one whose constructor needs
    some is refused here, rather than with a TypeError from Django's set-up. (Asked of its
    signature, so that a TypeError its constructor raises keeps its own traceback.)"""
    try:
        inspect.signature(cls).bind()
    except TypeError as exc:
        name = cls.__name__
        raise ConfigurationError(
            f"settings.CONVEYOR['MIDDLEWARE']: {entry!r} cannot be made without arguments "
            f"({exc}): put an instance in the list instead, e.g. "
            f'CONVEYOR = {{"MIDDLEWARE": [{name}(...)]}} with {name} imported in settings.py'
        ) from None
    except ValueError:
        pass  # no signature to read (a builtin): calling it tells


def load_tasks() -> None:
    """Import every installed app's ``tasks`` module (where it has one) and the modules of
    ``settings.CONVEYOR["IMPORTS"]``: the tasks they define register with the app, so a
    worker knows them before its first job."""
    autodiscover_modules("tasks")
    modules = conveyor_settings().get("IMPORTS", ())
    check_setting("IMPORTS", modules)
    for module in modules:
        _import(module)


def _import(module: str) -> None:
    """Import a module of ``IMPORTS``: one that does not exist is a mistake in the setting,
    said so; an import that fails inside it keeps its own traceback."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not missing or not (module == missing or module.startswith(missing + ".")):
            raise
        raise ConfigurationError(
            f"settings.CONVEYOR['IMPORTS'] names {module!r}, which cannot be imported: there "
            f"is no module {missing!r}; fix the name (a dotted module path, as in an import "
            "statement), or install the package that has it"
        ) from None
