"""How ``conveyor`` commands log: level and format from options or the environment."""

from __future__ import annotations

import os

import click

from .. import _logging

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

level_option = click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    envvar="CONVEYOR_LOG_LEVEL",
    show_envvar=True,
    default=None,
    help="Log this and above  [default: info; debug with conveyor -v]",
)
format_option = click.option(
    "--log-format",
    type=click.Choice(FORMATS, case_sensitive=False),
    envvar="CONVEYOR_LOG_FORMAT",
    show_envvar=True,
    default="text",
    show_default=True,
    help="text for people, json for one JSON object a line (log collectors).",
)


def setup(ctx: click.Context, level: str | None, fmt: str) -> None:
    """Configure logging once per process: ``--log-level`` given on the command line wins,
    then the group's ``-v`` (debug), then CONVEYOR_LOG_LEVEL, then info."""
    verbose = bool(ctx.find_root().params.get("verbose"))
    source = ctx.get_parameter_source("log_level")
    explicit = level is not None and source is click.core.ParameterSource.COMMANDLINE
    chosen = level if explicit else ("debug" if verbose else level or "info")
    assert chosen is not None
    _logging.configure(chosen.lower(), fmt.lower())


def setup_from_env(verbose: bool) -> None:
    """Logging for the commands without log options, when asked for: -v, else
    CONVEYOR_LOG_LEVEL and CONVEYOR_LOG_FORMAT (to stderr: stdout stays the command's).
    Otherwise Python's last resort still prints a warning or an error, and nothing else."""
    env = {"CONVEYOR_LOG_LEVEL": ("info", LEVELS), "CONVEYOR_LOG_FORMAT": ("text", FORMATS)}
    if not verbose and not any(os.environ.get(name) for name in env):
        return
    chosen = []
    for name, (default, allowed) in env.items():
        value = (os.environ.get(name) or default).lower()
        if value not in allowed:
            raise click.UsageError(f"{name}={value!r}: use one of {', '.join(allowed)}")
        chosen.append(value)
    level, fmt = chosen
    _logging.configure("debug" if verbose else level, fmt)
