"""The ``conveyor`` command: one entry point, one module per command group."""

from __future__ import annotations

import re
import sys

import click

from .._errors import ConveyorError
from . import _logs
from .actions import cancel, purge, requeue
from .demo import demo
from .events import events
from .info import info
from .jobs import job, jobs
from .migrate import migrate
from .probe import ping
from .queues import queues
from .schedules import schedules
from .worker import worker

# user:password@ in any URL an error message carries
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)[^\s/@]+@")


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
    if ctx.invoked_subcommand != "worker":  # the worker sets up logging from its options
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
    migrate,
    worker,
    demo,
):
    cli.add_command(command)


def redact(message: str) -> str:
    """The message with any URL's password masked."""
    return _CREDENTIALS.sub(r"\g<head>***@", message)


def main() -> None:
    try:
        code = cli.main(prog_name="conveyor", standalone_mode=False)
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
