"""``python manage.py conveyor_worker``: ``conveyor worker`` for a Django project.

The options are ``conveyor worker``'s, taken from its click command (``--help`` lists
them), but for the app, which is the project's (``settings.CONVEYOR``): no MODULE, no
``-A``. ``--settings`` and ``--pythonpath`` work as with every Django command.

Before the worker starts: Django's system checks, then every installed app's ``tasks``
module and ``settings.CONVEYOR["IMPORTS"]`` are imported, so their tasks are known. Children
of ``--pool processes`` import ``conveyor.contrib.django._boot``, which does the same.
"""

from __future__ import annotations

import os
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError

from .....cli import _logs, run
from .....cli.worker import run_worker, worker
from ..._settings import get_app, load_tasks

BOOT = "conveyor.contrib.django._boot:app"
_NOT_HERE = ("module", "app_spec")  # the project's app is the one settings.CONVEYOR makes


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types
    help = "Run a Conveyor worker for this project (the options of `conveyor worker`)."

    def run_from_argv(self, argv: list[str]) -> None:
        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        run(command(self), prog, argv[2:])

    def print_help(self, prog_name: str, subcommand: str) -> None:
        """``manage.py help conveyor_worker``: the options, as ``--help`` shows them."""
        worker = command(self)
        with click.Context(worker, info_name=f"{os.path.basename(prog_name)} {subcommand}") as ctx:
            click.echo(worker.get_help(ctx))

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command("conveyor_worker", "--", "-q", "mail")``: the arguments after
        ``--`` are the command line's."""
        try:
            command(self).main(args=list(options["arguments"]), standalone_mode=False)
        except click.ClickException as exc:
            raise CommandError(exc.format_message()) from None

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("arguments", nargs="*", help="conveyor worker's options")


def command(django_command: BaseCommand) -> click.Command:
    """``conveyor worker`` as ``conveyor_worker``: its options, the project's app."""

    @click.pass_context
    def start(ctx: click.Context, /, **options: Any) -> None:
        options.pop("settings", None)  # Django read both before the command was found
        options.pop("pythonpath", None)
        try:
            django_command.check()  # as runserver does: a broken project fails here
        except CommandError as exc:
            raise click.ClickException(str(exc)) from None
        _logs.setup(ctx, options.pop("log_level"), options.pop("log_format"))
        load_tasks()
        app = get_app()
        url = options.pop("url")
        # The children of --pool processes take the app from settings and this URL.
        os.environ["CONVEYOR_URL"] = url or app.url
        run_worker(app, BOOT, url=url, **options)

    params = [p for p in worker.params if p.name not in _NOT_HERE]
    params += [
        click.Option(["--settings"], hidden=True, help="Django's: the settings module."),
        click.Option(["--pythonpath"], hidden=True, help="Django's: a folder for sys.path."),
    ]
    return click.Command(
        "conveyor_worker",
        params=params,
        callback=start,
        help="Run jobs of this Django project's tasks and of its Conveyor app "
        "(settings.CONVEYOR) until SIGTERM.\n\n" + _rest_of(worker.help),
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def _rest_of(text: str | None) -> str:
    """``conveyor worker``'s help after its first paragraph (which is about MODULE)."""
    return (text or "").partition("\n\n")[2]
