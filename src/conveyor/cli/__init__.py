"""The ``conveyor`` command: one entry point, one module per command group."""

from __future__ import annotations

import logging
import sys

import click

from .._errors import ConveyorError
from .admin import info, jobs, purge, requeue
from .demo import demo
from .events import events
from .worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conveyor")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def cli(verbose: bool) -> None:
    """Conveyor: a task queue that never loses a job."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for command in (worker, info, jobs, requeue, purge, demo, events):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConveyorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
