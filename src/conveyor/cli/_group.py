"""The ``conveyor`` command's click group: a command's module is imported when that
command runs (or when ``--help`` lists them all)."""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

import click

from .._errors import ConveyorError
from .._inspect import redact
from . import _logs

# command -> (its module in this package, the click command's name there)
COMMANDS = {
    "info": ("info", "info"),
    "jobs": ("jobs", "jobs"),
    "job": ("jobs", "job"),
    "cancel": ("actions", "cancel"),
    "requeue": ("actions", "requeue"),
    "delete": ("actions", "delete"),
    "purge": ("actions", "purge"),
    "queues": ("queues", "queues"),
    "schedules": ("schedules", "schedules"),
    "ping": ("probe", "ping"),
    "events": ("events", "events"),
    "worker": ("worker", "worker"),
    "exporter": ("exporter", "exporter"),
    "dashboard": ("dashboard", "dashboard"),
    "migrate": ("migrate", "migrate"),
    "demo": ("demo", "demo"),
}


class _Commands(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = COMMANDS.get(cmd_name)
        if found is None:
            return super().get_command(ctx, cmd_name)
        command = getattr(importlib.import_module(f".{found[0]}", __package__), found[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conveyor")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details (--log-level debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Conveyor: a task queue that never loses a job.

    Every command takes -A/--app MODULE (your app: its tasks, codec and key prefix) and
    --url URL (the broker; default CONVEYOR_URL, then the app's, then
    sqlite:///./conveyor.db). Commands that list or show something take --json.

    \b
    Shell completion (bash; zsh and fish alike):
      eval "$(_CONVEYOR_COMPLETE=bash_source conveyor)"
    """
    if ctx.invoked_subcommand not in ("worker", "exporter"):  # they have logging options
        _logs.setup_from_env(verbose)


def run(command: click.Command, prog_name: str, args: list[str] | None = None) -> NoReturn:
    """Run a click command as a program: usage errors and ``ConveyorError`` are printed
    (without a URL's password) and set the exit code. ``conveyor`` runs this way, and so
    do the commands of the framework integrations (``manage.py conveyor_worker``)."""
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConveyorError as exc:
        click.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
