"""Finding the application and the broker a command works on.

Every command takes ``-A/--app MODULE`` (your app: its tasks, codec, secret and key prefix)
and ``--url`` (the broker; ``CONVEYOR_URL`` when not given). ``--url`` wins over the URL the
app names, so one tasks module runs against any broker. Without ``-A`` a plain app on the
URL is used (the default ``sqlite:///./conveyor.db`` when there is none).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from .._app import Conveyor
from .._errors import ConfigurationError, InvalidName, InvalidURL
from .._message import validate_job_id, validate_queue
from ..brokers import check_url, load_adapter, redact_url

F = TypeVar("F", bound=Callable[..., Any])


def app_options(fn: F) -> F:
    """``-A/--app`` and ``--url``, the same on every command."""
    import click

    fn = click.option(
        "--url",
        envvar="CONVEYOR_URL",
        show_envvar=True,
        metavar="URL",
        help="Broker URL; wins over the app's (default: the app's, else sqlite:///./conveyor.db).",
    )(fn)
    return click.option(
        "-A",
        "--app",
        "app_spec",
        metavar="MODULE",
        help="Your app: myapp.tasks, or myapp.tasks:app when the module holds several.",
    )(fn)


def load_app(spec: str) -> tuple[Conveyor, str]:
    """Import ``module`` or ``module:attribute`` and return its ``Conveyor`` and module name.

    With a bare module, the attribute ``app`` is used if it is a Conveyor, else the only
    Conveyor instance defined in the module.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or module_name.startswith("."):
        raise _usage(f"bad app {spec!r}: name a module to import, myapp.tasks or myapp.tasks:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current folder is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing and missing != module_name and not module_name.startswith(missing + "."):
            raise _usage(  # the module was found; something it imports was not
                f"cannot import {module_name!r}: {exc}. It imports {missing!r}, which is not "
                "installed where this command runs: install it, or run from the environment "
                "the app runs in."
            ) from exc
        raise _usage(
            f"cannot import {module_name!r}: {exc}. Run from the folder that contains it, "
            "or set PYTHONPATH."
        ) from exc
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, Conveyor):
            raise _usage(f"{spec!r} is not a Conveyor application")
        return app, module_name
    candidate = getattr(module, "app", None)
    if isinstance(candidate, Conveyor):
        return candidate, module_name
    apps = [v for v in vars(module).values() if isinstance(v, Conveyor)]
    if len(apps) != 1:
        raise _usage(
            f"found {len(apps)} Conveyor applications in {module_name!r}; "
            f"name one as {module_name}:NAME"
        )
    return apps[0], module_name


def job_id_argument(value: str) -> str:
    """A job id given on the command line, checked: a malformed one is a usage error (exit 2,
    docs/cli.md), not a broker's answer."""
    return _argument(validate_job_id, value)


def queue_argument(value: str) -> str:
    """A queue name given on the command line, checked like ``job_id_argument``."""
    return _argument(validate_queue, value)


def _argument(check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except InvalidName as exc:
        raise _usage(str(exc)) from exc


def _usage(message: str) -> Exception:
    """click's usage error: exit code 2, the command's usage line above the message."""
    import click

    return click.UsageError(message)


def use_url(app: Conveyor, url: str) -> None:
    """Point a loaded app at another broker. Its registry, codec and prefix stay: only the
    broker changes (opened on first use, like the app's own)."""
    if url == app.url:
        return
    load_adapter(url)  # a bad URL fails here, before the app's broker is let go
    app.close()
    app.url, kept = url, app.store_url
    try:
        app.pick_store()
    except ConfigurationError:
        if not kept:
            raise
        app.store_url = None  # the app's store was for its own URL's broker
        app.pick_store()


def open_app(spec: str | None, url: str | None, *, create: bool = False) -> Conveyor:
    """The app of ``-A`` (else a plain one) on ``--url`` if given; see ``on_broker``."""
    app = load_app(spec)[0] if spec else Conveyor(url)
    return on_broker(app, url, spec, create=create)


def on_broker(app: Conveyor, url: str | None, spec: str | None, *, create: bool) -> Conveyor:
    """Point the app at ``url`` (if given) and check its SQLite file.

    Commands that only read or change existing jobs leave ``create`` off, and the broker
    is opened with ``create=False``: they refuse a SQLite file that does not exist rather
    than create an empty database in the wrong place, and a file that holds no Conveyor
    database; likewise a PostgreSQL schema without Conveyor's tables (no migration runs);
    a sharded Redis prefix not used yet gets no layout (its number of shards is fixed by
    its first producer or worker, not by a look). A worker or the demo sets it, and the
    broker makes a missing file and its folder (private to their owner) when it opens.
    """
    if url:
        use_url(app, url)
    if not create:
        records = app.store_url or app.url  # an amqp:// broker's records are in its store
        path = sqlite_file(records)
        if path is not None and not os.path.exists(path):
            raise ConfigurationError(missing_database(records, path, bool(url), spec))
        app.open(create=False)
    return app


def sqlite_file(url: str) -> str | None:
    """The absolute path of a ``sqlite://`` URL's file; None for other brokers."""
    if check_url(url) != "sqlite":
        return None
    from ..brokers.sqlite import sqlite_path

    try:
        return os.path.abspath(sqlite_path(url))
    except InvalidURL as exc:  # its message quotes the URL: show it redacted
        raise InvalidURL(str(exc).replace(url, redact_url(url))) from None


def missing_database(url: str, path: str, given: bool, spec: str | None) -> str:
    """What to do when a command meant to read jobs finds no database file."""
    if given:
        origin = f"from {redact_url(url)}"
    elif spec:
        origin = f"the URL your app {spec} names"
    else:
        origin = "the default sqlite:///./conveyor.db, in this folder"
    return (
        f"no SQLite database at {path} ({origin}); nothing was created. Point at the file "
        "your workers use: --url sqlite:////absolute/path/jobs.db (four slashes; three make "
        "the path relative to this folder), or set CONVEYOR_URL"
    )
