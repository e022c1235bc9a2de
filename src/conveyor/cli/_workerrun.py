"""What ``conveyor worker`` runs, without click: its options, as one table that both the
click command (``worker``) and the plain command-line reader of ``_fast`` are built from,
and ``run_worker``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._checks import MAX_SECONDS
from ..worker import Worker
from ..worker._worker import MAX_CONCURRENCY, MAX_DELIVERIES
from ._load import on_broker

if TYPE_CHECKING:
    from .._app import Conveyor


class Option:
    """One option of a worker command. ``kind`` is ``int`` or ``float`` (a number in
    ``low``..``high``), ``pool`` (one of the worker's pools) or ``text``. (A plain class:
    a frozen dataclass's methods are compiled when it is built, ~1 % of a worker's start.)"""

    __slots__ = (
        "default", "flags", "help", "high", "kind", "low", "metavar", "multiple", "name",
        "show_default",
    )  # fmt: skip

    def __init__(
        self,
        flags: tuple[str, ...],
        name: str,
        kind: str,
        default: Any,
        help: str,
        *,
        low: float | None = None,
        high: float | None = None,
        multiple: bool = False,
        metavar: str | None = None,
        show_default: bool = True,
    ) -> None:
        self.flags = flags
        self.name = name
        self.kind = kind
        self.default = default
        self.help = help
        self.low = low
        self.high = high
        self.multiple = multiple
        self.metavar = metavar
        self.show_default = show_default


OPTIONS = (
    Option(
        ("-q", "--queues"),
        "queues",
        "text",
        ("default",),
        "Queues to take jobs from (comma list or repeated).",
        multiple=True,
        metavar="Q[,Q...]",
    ),
    # The worker's own bounds, as the options' ranges: a value past one is a usage error
    # (exit 2, with the option's name), not the worker's refusal in its argument's words.
    Option(
        ("-c", "--concurrency"),
        "concurrency",
        "int",
        8,
        "Jobs run at once.",
        low=1,
        high=MAX_CONCURRENCY,
    ),
    Option(
        ("--pool",),
        "pool",
        "pool",
        "threads",
        "Sync tasks on threads or in child processes; async favours async def tasks.",
    ),
    Option(
        ("--lease",),
        "lease",
        "float",
        30.0,
        "Seconds a job stays ours between renewals; a dead worker's jobs return after it.",
        low=0.1,
        high=MAX_SECONDS,
    ),
    Option(
        ("--grace",),
        "grace",
        "float",
        25.0,
        "Seconds running jobs get to finish on SIGTERM before they are handed back.",
        low=0,
        high=MAX_SECONDS,
    ),
    Option(
        ("--trust",),
        "trust",
        "text",
        (),
        "Also run callables enqueued by name from this top-level package.",
        multiple=True,
        metavar="PKG[,PKG...]",
        show_default=False,
    ),
    Option(
        ("--max-deliveries",),
        "max_deliveries",
        "int",
        5,
        "Dead-letter a job delivered more often than this without finishing.",
        low=1,
        high=MAX_DELIVERIES,
    ),
    Option(
        ("--max-jobs-per-child",),
        "max_jobs_per_child",
        "int",
        None,
        "With --pool processes: replace a child process by a fresh one after N jobs.",
        low=1,
        metavar="N",
        show_default=False,
    ),
    Option(
        ("--max-child-memory",),
        "max_child_memory",
        "int",
        None,
        "With --pool processes: replace a child whose resident memory is above MIB "
        "mebibytes after a job.",
        low=1,
        metavar="MIB",
        show_default=False,
    ),
    Option(
        ("--metrics-port",),
        "metrics_port",
        "int",
        None,
        "Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (needs conveyor[prometheus]).",
        low=0,
        high=65535,
        metavar="PORT",
        show_default=False,
    ),
)


def names(values: tuple[str, ...]) -> list[str]:
    """Repeatable options that also take comma lists: ``-q a,b -q c`` -> [a, b, c]."""
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


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
    app._serving()
    on_broker(app, url, spec, create=True)
    if url:
        # Process-pool children import the app themselves: an app that takes its URL from
        # the environment then uses the same broker as this worker.
        os.environ["CONVEYOR_URL"] = url
        if app.store_url:
            os.environ["CONVEYOR_STORE_URL"] = app.store_url
    if metrics_port is not None:  # before the worker is made: it may add the middleware
        import click

        from ..contrib.prometheus import serve

        server = serve(app, metrics_port)
        click.echo(f"serving metrics at {server.url}", err=True)
    Worker(
        app,
        names(queues),
        concurrency=concurrency,
        pool=pool,
        lease=lease,
        grace=grace,
        trust=names(trust),
        max_deliveries=max_deliveries,
        module=spec,
        max_jobs_per_child=max_jobs_per_child,
        max_child_memory=max_child_memory,
    ).run()
