"""How ``conveyor`` commands log: level and format from options or the environment."""

from __future__ import annotations

import os

import click

from .. import _logging
from .._errors import ConveyorError


def _checked(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The value as ``_logging`` takes it (a level in any case or a number; text or json),
    or a usage error that says what to write."""
    if value is None:
        return None
    try:
        if param.name == "log_level":
            _logging.parse_level(value)
        else:
            _logging.formatter(value)
    except ConveyorError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


level_option = click.option(
    "--log-level",
    envvar="CONVEYOR_LOG_LEVEL",
    show_envvar=True,
    default=None,
    metavar="LEVEL",
    callback=_checked,
    help="debug, info, warning, error or critical (any case), or 1-50  "
    "[default: info; debug with conveyor -v]",
)
format_option = click.option(
    "--log-format",
    envvar="CONVEYOR_LOG_FORMAT",
    show_envvar=True,
    default="text",
    show_default=True,
    metavar="text|json",
    callback=_checked,
    help="text for people, json for one JSON object a line (log collectors).",
)


def setup(ctx: click.Context, level: str | None, fmt: str) -> None:
    """Configure logging once per process: ``--log-level`` given on the command line wins,
    then the group's ``-v`` (debug), then CONVEYOR_LOG_LEVEL, then info."""
    verbose = bool(ctx.find_root().params.get("verbose"))
    source = ctx.get_parameter_source("log_level")
    explicit = level is not None and source is click.core.ParameterSource.COMMANDLINE
    chosen = level if explicit else ("debug" if verbose else level or "info")
    _logging.configure(chosen or "info", fmt)


def setup_from_env(verbose: bool) -> None:
    """Logging for the commands without log options, when asked for: -v, else
    CONVEYOR_LOG_LEVEL and CONVEYOR_LOG_FORMAT (to stderr: stdout stays the command's).
    Otherwise Python's last resort still prints a warning or an error, and nothing else,
    but the broker clients' own (a connection lost and made again: Conveyor's line says it)."""
    level = os.environ.get("CONVEYOR_LOG_LEVEL")
    fmt = os.environ.get("CONVEYOR_LOG_FORMAT")
    if not verbose and not level and not fmt:
        _logging.quiet_clients()
        return
    try:
        _logging.configure("debug" if verbose else level or "info", fmt or "text")
    except ConveyorError as exc:
        raise click.UsageError(f"{exc} (from CONVEYOR_LOG_LEVEL / CONVEYOR_LOG_FORMAT)") from exc
