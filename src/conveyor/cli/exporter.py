"""``conveyor exporter --port PORT``: one process that serves the broker's gauges to
Prometheus (depth and oldest job of every queue, live workers), whatever the number of
workers, until SIGTERM or Ctrl-C (exit 0)."""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType

import click

from .._app import Conveyor
from .._errors import BrokerAuthError, BrokerGone, BrokerUnavailable, ConveyorError
from ..brokers import redact_url
from . import _logs
from ._load import app_options, load_app, on_broker


@click.command()
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    required=True,
    metavar="PORT",
    help="Serve http://HOST:PORT/metrics (0: any free port, printed at start).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    metavar="HOST",
    help="The address to listen on; 0.0.0.0 for a Prometheus on another machine.",
)
@click.option(
    "--namespace",
    metavar="PREFIX",
    help="The metric names' prefix (default: the namespace of the app's PrometheusMiddleware, "
    "as its workers serve them, else conveyor).",
)
@_logs.level_option
@_logs.format_option
@app_options
@click.pass_context
def exporter(
    ctx: click.Context,
    *,
    port: int,
    host: str,
    namespace: str | None,
    log_level: str | None,
    log_format: str,
    app_spec: str | None,
    url: str | None,
) -> None:
    """Serve Prometheus metrics read from the broker at each scrape: jobs per queue and
    status, the age of each queue's oldest job, live workers (needs conveyor[prometheus]).

    One exporter covers a fleet: the job counts and run times stay with each worker's
    --metrics-port. A broker that does not answer a scrape is reported as
    conveyor_broker_up 0 and logged; the exporter keeps serving.
    """
    _logs.setup(ctx, log_level, log_format)
    from ..contrib.prometheus import QueueMetrics, namespace_of, serve_exporter

    app = load_app(app_spec)[0] if app_spec else Conveyor(url)
    # A PostgreSQL or RabbitMQ broker is opened here (Redis on first use): one down now is
    # said by the first read below, and opened again at a later scrape (QueueMetrics.read).
    with contextlib.suppress(BrokerUnavailable):
        on_broker(app, url, app_spec, create=False)
    metrics = QueueMetrics(app, namespace_of(app) if namespace is None else namespace)
    server = serve_exporter(app, port, host, metrics=metrics)  # a port taken: stop here
    try:  # a broker that does not answer yet is logged, and served as broker_up 0
        metrics.read_or_log(fatal=(BrokerAuthError, BrokerGone))
    except ConveyorError:  # retrying cannot help: say so now, not broker_up 0 for ever
        server.close()
        raise
    click.echo(f"serving metrics of {redact_url(app.url)} at {server.url}", err=True)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):  # a supervisor's stop, or Ctrl-C
        signal.signal(signum, _stop)
    try:
        stop.wait()
    finally:
        server.close()
        app.close()
