"""``conveyor worker`` read without click, for the plain command lines that start workers.

click costs a worker's start ~13 ms of CPU: its import, and at every run its parser and
the look-ups of translations for its messages (``gettext``). A Procfile's or a container's
command line is plain: ``worker``, the module, options of the table in ``_workerrun``
(``-c 8``, ``--concurrency 8``, ``--concurrency=8``) with values click would take as they
are (numbers as digits, in range; a pool by name), ``-A``, ``--url``, ``--log-level``,
``--log-format``. ``worker_command`` reads such a line, and the environment variables the
options take, into what the worker command does with them. Anything else (help, an option
of the ``conveyor`` group such as ``-v``, an unknown option, a value click would refuse or
convert, shell completion) gives None, and click reads the line: what it says about it
stays exactly what it said. Errors once the worker runs are shown as ``run`` in
``_group`` shows them.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Any, NoReturn

from .. import _logging
from .._errors import ConveyorError
from ..worker._pools import POOLS
from ._load import load_app
from ._workerrun import OPTIONS, Option, run_worker

_TABLE = {flag: option for option in OPTIONS for flag in option.flags}
_OWN = {
    "-A": "app_spec",
    "--app": "app_spec",
    "--url": "url",
    "--log-level": "log_level",
    "--log-format": "log_format",
}
_DIGITS = re.compile(r"[0-9]+\Z")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?\Z")


class WorkerCommand:
    """What ``conveyor worker`` was asked for: the app's spec, the broker URL (None: the
    app's), the log level and format, and ``run_worker``'s options."""

    __slots__ = ("log_format", "log_level", "options", "spec", "url")

    def __init__(
        self, spec: str, url: str | None, log_level: str, log_format: str, options: dict[str, Any]
    ) -> None:
        self.spec = spec
        self.url = url
        self.log_level = log_level
        self.log_format = log_format
        self.options = options


def worker_command(args: list[str]) -> WorkerCommand | None:
    """``args`` (the command line after ``conveyor``) read as ``conveyor worker``; None
    when click must read them."""
    if not args or args[0] != "worker" or os.environ.get("_CONVEYOR_COMPLETE"):
        return None
    given: dict[str, Any] = {}
    module = None
    rest = args[1:]
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-"):
            if module is not None or not arg:
                return None
            module = arg
            continue
        flag, eq, value = arg.partition("=")
        if not eq:
            if not rest or rest[0].startswith("-"):
                return None
            value = rest.pop(0)
        elif not flag.startswith("--"):
            return None
        if flag in _OWN:
            given[_OWN[flag]] = value
        elif (option := _TABLE.get(flag)) is not None and (read := _read(option, value)):
            if option.multiple:
                given[option.name] = (*given.get(option.name, ()), read[0])
            else:
                given[option.name] = read[0]
        else:
            return None
    return _command(module, given)


def _read(option: Option, value: str) -> tuple[Any] | None:
    """``value`` as click converts it for ``option``, when click would take it as it is."""
    if option.kind == "pool":
        return (value,) if value in POOLS else None
    if option.kind == "text":
        return (value,)
    pattern, convert = (_DIGITS, int) if option.kind == "int" else (_DECIMAL, float)
    if not pattern.match(value):
        return None
    number = convert(value)
    if option.low is not None and number < option.low:
        return None
    if option.high is not None and number > option.high:
        return None
    return (number,)


def _command(module: str | None, given: dict[str, Any]) -> WorkerCommand | None:
    """The worker command from what the line gave, the environment and the defaults."""
    app_spec = given.pop("app_spec", None)
    if module and app_spec and module != app_spec:
        return None
    spec = module or app_spec
    if not spec or "" in (given.get("log_level"), given.get("log_format")):
        return None
    level = given.pop("log_level", None) or os.environ.get("CONVEYOR_LOG_LEVEL") or "info"
    fmt = given.pop("log_format", None) or os.environ.get("CONVEYOR_LOG_FORMAT") or "text"
    try:
        _logging.parse_level(level)
        _logging.formatter(fmt)
    except ConveyorError:
        return None
    url = given.pop("url", None) if "url" in given else os.environ.get("CONVEYOR_URL") or None
    options = {option.name: option.default for option in OPTIONS}
    options.update(given)
    return WorkerCommand(spec, url, level, fmt, options)


def run(command: WorkerCommand) -> NoReturn:
    """Run the worker command as ``conveyor worker`` runs it through click, with the same
    output and exit code for what goes wrong (``run`` in ``_group``)."""
    try:
        _logging.configure(command.log_level, command.log_format)
        app, module_name = load_app(command.spec)
        spec = command.spec if ":" in command.spec else module_name
        run_worker(app, spec, url=command.url, **command.options)
    except ConveyorError as exc:
        from .._inspect import redact  # the job inspector's module: not a worker's

        _stderr(f"error: {redact(str(exc))}")
        sys.exit(1)
    except (EOFError, KeyboardInterrupt):
        _stderr("")  # the blank line closes the terminal's ^C echo
        _stderr("aborted")
        sys.exit(130)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:
        _show_click_error(exc, command)
    sys.exit(0)


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _show_click_error(exc: Exception, command: WorkerCommand) -> NoReturn:
    """A click error raised by the worker command's code (``load_app``'s usage errors),
    shown with the usage line click shows above it; any other error is raised."""
    click = sys.modules.get("click")
    if click is None or not isinstance(exc, click.ClickException):
        raise exc
    if isinstance(exc, click.UsageError) and exc.ctx is None:
        from ._group import cli

        group = click.Context(cli, info_name="conveyor", **cli.context_settings)
        exc.ctx = click.Context(cli.get_command(group, "worker"), info_name="worker", parent=group)
    exc.show()
    sys.exit(exc.exit_code)
