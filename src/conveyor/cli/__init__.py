"""The ``conveyor`` command: one entry point, one module per command group."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from .._errors import ConveyorError
from .._inspect import redact
from . import _logs
from .actions import cancel, purge, requeue
from .dashboard import dashboard
from .demo import demo
from .events import events
from .exporter import exporter
from .info import info
from .jobs import job, jobs
from .probe import ping
from .queues import queues
from .schedules import schedules
from .worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


for command in (
    info,
    jobs,
    job,
    cancel,
    requeue,
    purge,
    queues,
    schedules,
    ping,
    events,
    dashboard,
    worker,
    exporter,
    demo,
):
    cli.add_command(command)


def main() -> None:
    run(cli, "conveyor")


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
