"""``conveyor worker MODULE``: run jobs until SIGTERM (exit 0) — the Procfile line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..worker._pools import POOLS
from . import _logs
from ._load import app_options, load_app
from ._workerrun import OPTIONS, Option, run_worker

F = TypeVar("F", bound=Callable[..., Any])
__all__ = ["run_worker", "worker", "worker_options"]


def worker_options(fn: F) -> F:
    """The options of a worker command, log level and format included: ``conveyor worker``
    and the commands that run a worker from a framework's own CLI (``flask conveyor
    worker``) take the same ones, and hand them to ``run_worker``."""
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def _click_option(option: Option) -> Callable[[Any], Any]:
    extra: dict[str, Any] = {"show_default": True} if option.show_default else {}
    if option.multiple:
        extra["multiple"] = True
    if option.metavar:
        extra["metavar"] = option.metavar
    low, high = option.low, option.high
    if option.kind == "int":
        extra["type"] = click.IntRange(
            min=None if low is None else int(low), max=None if high is None else int(high)
        )
    elif option.kind == "float":
        extra["type"] = click.FloatRange(min=low, max=high)
    elif option.kind == "pool":
        extra["type"] = click.Choice(POOLS)
    return click.option(*option.flags, default=option.default, help=option.help, **extra)


_OPTIONS: list[Callable[[Any], Any]] = [
    *(_click_option(option) for option in OPTIONS),
    _logs.level_option,
    _logs.format_option,
]


@click.command()
@click.argument("module", required=False)
@worker_options
@app_options
@click.pass_context
def worker(
    ctx: click.Context,
    /,
    *,
    module: str | None,
    app_spec: str | None,
    url: str | None,
    **options: Any,
) -> None:
    """Run jobs from MODULE's app (myapp.tasks, or myapp.tasks:app), given as an argument
    or as -A MODULE.

    SIGTERM or Ctrl-C stops fetching and lets running jobs finish within --grace; a second
    one hands them back at once. Either way no job is lost, and the exit code is 0.
    """
    if module and app_spec and module != app_spec:
        raise click.UsageError(f"two apps given: {module} and -A {app_spec}; give one")
    spec = module or app_spec
    if not spec:
        raise click.UsageError("name the module of your app: conveyor worker myapp.tasks")
    _logs.setup(ctx, options.pop("log_level"), options.pop("log_format"))
    app, module_name = load_app(spec)
    run_worker(app, spec if ":" in spec else module_name, url=url, **options)
