"""``conveyor worker MODULE``: run jobs until SIGTERM (exit 0) — the Procfile line."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..worker import Worker
from ..worker._pools import POOLS
from . import _logs
from ._load import app_options, load_app, on_broker

if TYPE_CHECKING:
    from .._app import Conveyor

F = TypeVar("F", bound=Callable[..., Any])


def _names(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma lists: ``-q a,b -q c`` -> [a, b, c]."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def worker_options(fn: F) -> F:
    """The options of a worker command, log level and format included: ``conveyor worker``
    and the commands that run a worker from a framework's own CLI (``flask conveyor
    worker``) take the same ones, and hand them to ``run_worker``."""
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "-q",
        "--queues",
        multiple=True,
        default=("default",),
        show_default=True,
        metavar="Q[,Q...]",
        help="Queues to take jobs from (comma list or repeated).",
    ),
    click.option(
        "-c",
        "--concurrency",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        help="Jobs run at once.",
    ),
    click.option(
        "--pool",
        type=click.Choice(POOLS),
        default="threads",
        show_default=True,
        help="Sync tasks on threads or in child processes; async favours async def tasks.",
    ),
    click.option(
        "--lease",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        help="Seconds a job stays ours between renewals; a dead worker's jobs return after it.",
    ),
    click.option(
        "--grace",
        type=click.FloatRange(min=0),
        default=25.0,
        show_default=True,
        help="Seconds running jobs get to finish on SIGTERM before they are handed back.",
    ),
    click.option(
        "--trust",
        multiple=True,
        metavar="PKG[,PKG...]",
        help="Also run callables enqueued by name from this top-level package.",
    ),
    click.option(
        "--max-deliveries",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Dead-letter a job delivered more often than this without finishing.",
    ),
    click.option(
        "--max-jobs-per-child",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="With --pool processes: replace a child process by a fresh one after N jobs.",
    ),
    click.option(
        "--max-child-memory",
        type=click.IntRange(min=1),
        default=None,
        metavar="MIB",
        help="With --pool processes: replace a child whose resident memory is above MIB "
        "mebibytes after a job.",
    ),
    click.option(
        "--metrics-port",
        type=click.IntRange(min=0, max=65535),
        default=None,
        metavar="PORT",
        help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics "
        "(needs conveyor[prometheus]).",
    ),
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


def run_worker(
    app: Conveyor,
    spec: str,
    *,
    url: str | None = None,
    queues: tuple[str, ...],
    concurrency: int,
    pool: str,
    lease: float,
    grace: float,
    trust: tuple[str, ...],
    max_deliveries: int,
    max_jobs_per_child: int | None,
    max_child_memory: int | None,
    metrics_port: int | None,
) -> None:
    """Run a worker on ``app`` with the options of ``worker_options`` until it is stopped
    (the caller set up logging from ``--log-level`` and ``--log-format`` first). ``spec``
    (``module`` or ``module:attribute``) is what process-pool children import to find the
    app, and its package is trusted. ``url`` (``--url``) points the app at another broker.
    Shared by ``conveyor worker`` and the commands of the framework integrations."""
    on_broker(app, url, spec, create=True)
    if url:
        # Process-pool children import the app themselves: an app that takes its URL from
        # the environment then uses the same broker as this worker.
        os.environ["CONVEYOR_URL"] = url
        if app.store_url:
            os.environ["CONVEYOR_STORE_URL"] = app.store_url
    if metrics_port is not None:  # before the worker is made: it may add the middleware
        from ..contrib.prometheus import serve

        server = serve(app, metrics_port)
        click.echo(f"serving metrics at {server.url}", err=True)
    Worker(
        app,
        _names(queues),
        concurrency=concurrency,
        pool=pool,
        lease=lease,
        grace=grace,
        trust=_names(trust),
        max_deliveries=max_deliveries,
        module=spec,
        max_jobs_per_child=max_jobs_per_child,
        max_child_memory=max_child_memory,
    ).run()
