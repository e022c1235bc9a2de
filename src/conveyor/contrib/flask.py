"""Flask: an extension whose tasks run inside the Flask app context
(``pip install 'conveyor[flask]'``).

::

    # shop/tasks.py
    from flask import current_app
    from conveyor.contrib.flask import FlaskConveyor

    conveyor = FlaskConveyor()             # a Conveyor: define tasks on it at import time

    @conveyor.task(retries=3)
    def send_receipt(order_id: int) -> str:
        sender = current_app.config["MAIL_FROM"]    # the app context, in the worker too
        ...

    # shop/__init__.py
    def create_app(config=None) -> Flask:
        app = Flask(__name__)
        app.config["CONVEYOR_URL"] = "redis://localhost:6379/0"
        conveyor.init_app(app)             # app.extensions["conveyor"], `flask conveyor`
        return app

    $ flask --app shop conveyor worker -c 8     # the options of `conveyor worker`

``init_app`` reads ``CONVEYOR_URL`` from ``app.config`` (when it is there; else the URL
given to ``FlaskConveyor(url=...)``, else the ``CONVEYOR_URL`` environment variable, else
``sqlite:///./conveyor.db``), registers the extension as ``app.extensions["conveyor"]`` and
adds the ``flask conveyor worker`` command. Every other option (``trust``, ``serializer``,
``secret``...) is ``Conveyor``'s, given to ``FlaskConveyor(...)``: they decide how jobs are
encoded and must be the same in every process, which code guarantees and per-app
configuration would not.

Each run of a task, in the worker, is inside an app context of the Flask app
(``current_app``, ``g``, extensions such as Flask-SQLAlchemy): a middleware pushes a fresh
one before the task and pops it after, which calls the app's ``teardown_appcontext``
functions with the task's exception, as after a request. The Flask app is the one of the
last ``init_app``. An extension that has no Flask app when it opens its broker (``conveyor
worker shop.tasks``, whose import calls no ``init_app``) loads the one ``FLASK_APP`` names
first, so the broker is that app's ``CONVEYOR_URL`` (``--url`` still wins); without
``FLASK_APP`` a worker warns and runs tasks without an app context. Each child process of
``--pool processes`` loads the app as the ``flask`` command does: ``FLASK_APP``, else
``wsgi.py`` or ``app.py`` in the current folder (``flask conveyor worker`` passes its
``--app`` on to its children in ``FLASK_APP``).
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import click

from .._app import Conveyor
from .._errors import ConfigurationError, ConveyorError, InvalidURL
from .._inspect import redact
from ..brokers import load_adapter, redact_url
from ..cli import _logs
from ..cli.worker import run_worker, worker_options
from ..middleware import Message, Middleware, Run, WorkerProcess
from . import require

if TYPE_CHECKING:
    from collections.abc import Iterable

    from flask import Flask
    from flask.ctx import AppContext

__all__ = ["FlaskConveyor"]

log = logging.getLogger("conveyor.contrib.flask")


class FlaskConveyor(Conveyor):
    """A ``Conveyor`` that is a Flask extension (see the module docstring).

    ``FlaskConveyor(app)`` calls ``init_app(app)`` at once; ``FlaskConveyor()`` then
    ``init_app`` in an app factory is the usual way. The keyword arguments are
    ``Conveyor``'s.
    """

    def __init__(self, app: Flask | None = None, *, url: str | None = None, **options: Any):
        require("flask", "flask", user="conveyor.contrib.flask")
        if app is not None and not hasattr(app, "config"):
            raise ConfigurationError(
                f"FlaskConveyor takes the Flask app first, not {app!r}: give the broker as "
                "FlaskConveyor(url=...) or app.config['CONVEYOR_URL']"
            )
        super().__init__(url, **options)
        # What init_app falls back to for an app whose config names no broker or store (an
        # app factory may make several apps, each configured its own way).
        self._given = (self.url, options.get("store"))
        self.flask_app: Flask | None = None
        self.add_middleware(_AppContext(self))
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Use ``app``'s ``CONVEYOR_URL`` (if set), run tasks in ``app``'s context, and
        register as ``app.extensions["conveyor"]`` with the ``flask conveyor`` commands.

        The URL is taken only while the broker is not open: changing it after the first job
        was sent raises ``ConfigurationError`` (``close()`` first, as a test teardown does)."""
        given_url, given_store = self._given
        url = app.config.get("CONVEYOR_URL") or given_url
        store = app.config.get("CONVEYOR_STORE_URL") or (given_store if url == given_url else None)
        if url != self.url:
            try:
                load_adapter(url)
            except InvalidURL as exc:
                raise InvalidURL(f"app.config['CONVEYOR_URL']: {exc}") from None
            if self._broker is not None:
                raise ConfigurationError(
                    f"app.config['CONVEYOR_URL'] is {redact_url(url)} but this FlaskConveyor "
                    f"is already open on {redact_url(self.url)}: call init_app before the "
                    "first job is sent, or close() it first"
                )
            self.url = url
        if self._broker is None:
            self.store_url = store  # what this app's config gives, else what was given
        self.pick_store()  # an amqp:// broker's record store, else CONVEYOR_STORE_URL
        self.flask_app = app
        app.extensions["conveyor"] = self
        app.cli.add_command(flask_command)

    def _serving(self) -> None:
        """A worker command is about to serve this extension (``conveyor worker
        shop.tasks``): one that has no Flask app yet while ``FLASK_APP`` is set loads that
        app first, so the broker it opens is the one the app's ``CONVEYOR_URL`` names,
        where the web app sends its jobs (the command's ``--url`` is applied after, and
        wins). Only there: a producer or a test of an extension of its own is left be."""
        if self._broker is None and self.flask_app is None and os.environ.get("FLASK_APP"):
            self._load_flask_app()

    def _load_flask_app(self) -> None:
        """Load the Flask app as the ``flask`` command finds it (``FLASK_APP``, else
        ``wsgi.py`` or ``app.py`` in the current folder); loading it must call ``init_app``
        on this extension."""
        from flask.cli import NoAppException, ScriptInfo

        named = os.environ.get("FLASK_APP") or None
        try:
            ScriptInfo(app_import_path=named).load_app()
        except NoAppException as exc:
            where = f"FLASK_APP={named}" if named else "wsgi.py or app.py in this folder"
            why = exc.format_message().rstrip(".")
            raise ConfigurationError(
                f"this FlaskConveyor has no Flask app and cannot load the one of {where}: "
                f"{why}. Set FLASK_APP to the app (or factory) that calls init_app on it, or "
                "run the worker as `flask --app APP conveyor worker`"
            ) from exc
        if self.flask_app is None:
            raise ConfigurationError(
                "the Flask app found through FLASK_APP does not call init_app on this "
                "FlaskConveyor: call conveyor.init_app(app) in the app factory"
            )


class _AppContext(Middleware):
    """Pushes the Flask app's context around each run of a task, where it runs."""

    def __init__(self, conveyor: FlaskConveyor) -> None:
        self._conveyor = conveyor
        self._pushed: ContextVar[AppContext | None] = ContextVar("conveyor_flask", default=None)

    @property
    def name(self) -> str:
        return "flask app context"

    def on_worker_start(self, worker: WorkerProcess) -> None:
        conveyor = self._conveyor
        if conveyor.flask_app is None and (worker.child or os.environ.get("FLASK_APP")):
            conveyor._load_flask_app()
        if conveyor.flask_app is None:
            log.warning(
                "no Flask app: tasks run without an app context. Run the worker with "
                "`flask --app APP conveyor worker`, set FLASK_APP, or call init_app where "
                "the worker's module is imported"
            )

    def before_run(self, message: Message) -> None:
        app = self._conveyor.flask_app
        if app is not None:
            context = app.app_context()
            context.push()
            self._pushed.set(context)

    def after_run(self, message: Message, run: Run) -> None:
        context = self._pushed.get()
        if context is not None:
            self._pushed.set(None)
            context.pop(run.error)  # teardown_appcontext functions get the task's error


@click.group("conveyor")
def flask_command() -> None:
    """Conveyor's commands, on this app's FlaskConveyor."""


@flask_command.command("worker")
@worker_options
@click.pass_context
def _worker(ctx: click.Context, /, **options: Any) -> None:
    """Run jobs of this app's FlaskConveyor, each inside the app context, until SIGTERM.

    The options are those of `conveyor worker`; the broker is the app's CONVEYOR_URL.
    With --pool processes each child process loads the app again, as this command did.
    """
    from flask.cli import ScriptInfo

    info = ctx.ensure_object(ScriptInfo)
    conveyor = info.load_app().extensions.get("conveyor")
    if not isinstance(conveyor, FlaskConveyor):
        raise click.UsageError("this Flask app has no FlaskConveyor: call conveyor.init_app(app)")
    if info.app_import_path:
        os.environ["FLASK_APP"] = info.app_import_path  # for the children to load the app
    elif info.create_app is not None and options["pool"] == "processes":
        raise click.UsageError(
            "with --pool processes each child loads the Flask app again, which this script "
            "makes itself: set FLASK_APP (or use flask --app ...)"
        )
    _logs.setup(ctx, options.pop("log_level"), options.pop("log_format"))
    try:
        run_worker(conveyor, _where(conveyor, options["pool"]), **options)
    except ConveyorError as exc:
        raise click.ClickException(redact(str(exc))) from exc


def _where(conveyor: FlaskConveyor, pool: str) -> str:
    """``module:attribute`` of the extension, as process-pool children import it: the first
    module of its tasks that holds it (so importing it registers tasks too), else a module
    that does (an app that only enqueues plain functions has no tasks). Its package is
    trusted. A pool without children needs no such module: the Flask app's is trusted."""
    tasks = dict.fromkeys(task.fn.__module__ for task in conveyor.registry.values())
    found = _holder(conveyor, tasks) or _holder(conveyor, _by_closeness(conveyor))
    if found is not None:
        return found
    app = conveyor.flask_app
    if pool != "processes" and app is not None and app.import_name != "__main__":
        return app.import_name
    raise click.UsageError(
        "found no module that holds this app's FlaskConveyor, which each child process of "
        "--pool processes imports: make it a module-level name (conveyor = FlaskConveyor()) "
        "of a module the app factory imports, or use --pool threads"
    )


def _holder(conveyor: FlaskConveyor, names: Iterable[str]) -> str | None:
    """``module:attribute`` of the first of the modules ``names`` that holds ``conveyor``."""
    for name in names:
        module = sys.modules.get(name)
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            if value is conveyor:
                return f"{name}:{attribute}"
    return None


def _by_closeness(conveyor: FlaskConveyor) -> list[str]:
    """The imported modules a child could import again, those of the Flask app's package
    first: the module named after the app, then its package's, then the others."""
    app = conveyor.flask_app
    home = app.import_name if app is not None else ""
    package = home.partition(".")[0]

    def rank(name: str) -> int:
        if name == home:
            return 0
        return 1 if name.partition(".")[0] == package else 2

    names = [n for n in list(sys.modules) if not n.startswith("__")]  # not __main__
    return sorted(names, key=rank)
