"""Prometheus metrics for Conveyor (``pip install 'conveyor[prometheus]'``).

::

    from conveyor import Conveyor
    from conveyor.contrib.prometheus import PrometheusMiddleware

    app = Conveyor(url, middleware=[PrometheusMiddleware()])

then ``conveyor worker myapp.tasks --metrics-port 9100`` serves ``/metrics`` (or call
``serve(app, 9100)`` yourself). ``--metrics-port`` adds the middleware if the app has none.
``conveyor exporter --port 9101`` (``serve_exporter``) serves the broker's gauges alone, one
process for a whole fleet, under the namespace of the app's middleware (the workers' names).

Metrics (``namespace`` prefixes them; ``conveyor`` unless set):

===================================== ========= ================================================
``conveyor_jobs_total``               counter   attempts that ended, by ``task``, ``queue`` and
                                                ``status``: succeeded, failed, retried,
                                                cancelled, dead, released (handed back or its
                                                process died)
``conveyor_job_duration_seconds``     histogram run time of attempts, by ``task``, ``queue``
``conveyor_job_wait_seconds``         histogram how long jobs waited from ``delay()`` to their
                                                first run, by ``queue`` (a ``delay=``/``eta=``
                                                counts as waiting)
``conveyor_jobs_in_progress``         gauge     jobs running now, by ``queue``
``conveyor_jobs_enqueued_total``      counter   jobs this process sent, by ``task``, ``queue``
                                                (not one deduplicated by its ``key``)
===================================== ========= ================================================

and the broker's gauges, read from it at each scrape (``QueueMetrics``: the worker's
``/metrics`` and ``conveyor exporter`` serve the same ones; every process reports the same
numbers, aggregate them with ``max``):

===================================== ========= ================================================
``conveyor_queue_jobs``               gauge     jobs by ``queue`` and ``status`` (queued,
                                                scheduled, running, failed, dead)
``conveyor_queue_oldest_age_seconds`` gauge     by ``queue``: how long the job next in line has
                                                been queued (0 when none is)
``conveyor_workers``                  gauge     live workers (heartbeats not yet expired)
``conveyor_broker_up``                gauge     1 if the broker answered that read, else 0
===================================== ========= ================================================

With ``--pool processes`` every count is made in the worker process, which sees each attempt
end (also a child killed at its time limit, or one that died), so one process serves them
all: no multiprocess mode and no shared directory. Metrics your own tasks record run in the
children and are not served by the worker (use prometheus_client's multiprocess mode for
those). The metric names and labels are kept stable; docs/observability.md has alerts and a
Grafana dashboard built on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from .._message import JobStatus
from ..middleware import Message, Middleware, Outcome
from . import require

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

    from .._app import Conveyor

__all__ = [
    "DURATION_BUCKETS",
    "MetricsServer",
    "PrometheusMiddleware",
    "QueueMetrics",
    "namespace_of",
    "register_queue_metrics",
    "serve",
    "serve_exporter",
]

log = logging.getLogger("conveyor.prometheus")

# From a millisecond no-op to an hour-long report (seconds); waits use the same.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
QUEUE_STATUSES = ("queued", "scheduled", "running", "failed", "dead")
UNKNOWN_TASK = "unknown"  # the task label of a dead letter whose payload could not be read


def _prometheus() -> Any:
    return require("prometheus_client", "prometheus", user="conveyor.contrib.prometheus")


def _child(children: dict[tuple[str, ...], Any], metric: Any, key: tuple[str, ...]) -> Any:
    """The metric's child for these label values, made once: ``labels()`` checks and
    stringifies its values and takes a lock on every call, which a job need not pay."""
    child = children.get(key)
    if child is None:
        child = children.setdefault(key, metric.labels(*key))
    return child


class PrometheusMiddleware(Middleware):
    """Counts jobs into a Prometheus registry (``prometheus_client.REGISTRY`` unless
    ``registry`` is given). One per registry: a second one on the same registry is a
    ``ConfigurationError`` (pass each its own ``CollectorRegistry()``, in tests say)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "conveyor",
        buckets: tuple[float, ...] = DURATION_BUCKETS,
    ) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = prom.REGISTRY if registry is None else registry
        self.namespace = namespace
        made: list[Any] = []

        def metric(kind: Any, name: str, doc: str, labels: list[str], **more: Any) -> Any:
            made.append(
                kind(name, doc, labels, namespace=namespace, registry=self.registry, **more)
            )
            return made[-1]

        try:
            self.jobs = metric(prom.Counter, "jobs", "Attempts that ended, by outcome.",
                               ["task", "queue", "status"])  # fmt: skip
            self.duration = metric(prom.Histogram, "job_duration_seconds", "Run time of attempts.",
                                   ["task", "queue"], buckets=buckets)  # fmt: skip
            self.wait = metric(prom.Histogram, "job_wait_seconds",
                               "How long jobs waited from delay() to their first run.",
                               ["queue"], buckets=buckets)  # fmt: skip
            self.in_progress = metric(prom.Gauge, "jobs_in_progress", "Jobs running now.",
                                      ["queue"])  # fmt: skip
            self.enqueued = metric(prom.Counter, "jobs_enqueued", "Jobs this process sent.",
                                   ["task", "queue"])  # fmt: skip
        except ValueError as exc:  # Duplicated timeseries in CollectorRegistry
            for collector in made:
                self.registry.unregister(collector)
            raise ConfigurationError(
                f"cannot add Conveyor's metrics to this registry ({exc}): another "
                "PrometheusMiddleware (or another collector) already has those names there. "
                "Make one PrometheusMiddleware per registry, or pass "
                "registry=prometheus_client.CollectorRegistry(), or another namespace="
            ) from exc
        # The children of each metric by label values (see _child): a few per task and queue.
        self._jobs: dict[tuple[str, ...], Any] = {}
        self._duration: dict[tuple[str, ...], Any] = {}
        self._wait: dict[tuple[str, ...], Any] = {}
        self._in_progress: dict[tuple[str, ...], Any] = {}
        self._enqueued: dict[tuple[str, ...], Any] = {}

    def after_enqueue(self, message: Message, error: BaseException | None) -> None:
        if error is None:
            _child(self._enqueued, self.enqueued, (message.task, message.queue)).inc()

    def on_deduplicated(self, message: Message, job_id: str) -> None:
        """Not sent (the broker had a live job with its key): not counted."""

    def on_running(self, message: Message) -> None:
        queue = (message.queue,)
        _child(self._in_progress, self.in_progress, queue).inc()
        if message.attempt == 0:  # a retry waited for its backoff on purpose
            waited = max(time.time() - message.enqueued_at, 0.0)  # the clocks may disagree
            _child(self._wait, self.wait, queue).observe(waited)

    def on_outcome(self, message: Message | None, outcome: Outcome) -> None:
        task = outcome.task or UNKNOWN_TASK
        _child(self._jobs, self.jobs, (task, outcome.queue, outcome.status)).inc()
        if outcome.duration is None:  # it never ran (on_running was not called)
            return
        _child(self._in_progress, self.in_progress, (outcome.queue,)).dec()
        if outcome.status != "released":
            _child(self._duration, self.duration, (task, outcome.queue)).observe(outcome.duration)


@dataclasses.dataclass
class MetricsServer:
    """The ``/metrics`` endpoint ``serve`` or ``serve_exporter`` started; ``close()`` stops
    it."""

    host: str
    port: int  # the port it listens on (the one chosen when 0 was asked for)
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve(app: Conveyor, port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Serve the metrics of ``app``'s ``PrometheusMiddleware``, and the broker's gauges
    (``QueueMetrics``), at ``http://host:port/metrics`` from a daemon thread (the default
    host listens on every interface, for a Prometheus on another machine). If the app has
    no ``PrometheusMiddleware`` one is added: call this before making the worker, which
    takes the middleware the app has when it is made. ``port=0`` picks a free port
    (``server.port`` says which)."""
    middleware = next((m for m in app.middleware if isinstance(m, PrometheusMiddleware)), None)
    if middleware is None:
        middleware = PrometheusMiddleware()
        app.add_middleware(middleware)
    register_queue_metrics(app, middleware.registry, namespace=middleware.namespace)
    return _listen(middleware.registry, port, host)


def serve_exporter(
    app: Conveyor,
    port: int,
    host: str = "127.0.0.1",
    *,
    namespace: str | None = None,
    metrics: QueueMetrics | None = None,
) -> MetricsServer:
    """Serve the broker's gauges alone (``metrics``, a ``QueueMetrics`` unless given, and
    the serving process's own ``process_*`` metrics) at ``http://host:port/metrics`` from a
    daemon thread: what ``conveyor exporter`` runs, one process for every queue of the
    broker whatever the number of workers. It serves a registry of its own, never the
    default one: the job counts are the workers' to serve. ``port=0`` picks a free port.

    ``namespace`` prefixes the gauges' names; unless given, the app's
    ``PrometheusMiddleware``'s (``namespace_of``), so that the exporter and the workers'
    ``/metrics`` serve the same names. A ``metrics`` given carries its own."""
    prom = _prometheus()
    registry = prom.CollectorRegistry()
    prom.ProcessCollector(registry=registry)
    if metrics is None:
        metrics = QueueMetrics(app, namespace_of(app) if namespace is None else namespace)
    registry.register(metrics)
    return _listen(registry, port, host)


def namespace_of(app: Conveyor) -> str:
    """The ``namespace`` of ``app``'s ``PrometheusMiddleware`` (the first, if several),
    else ``conveyor``: the prefix its workers' metrics have."""
    found = (m.namespace for m in app.middleware if isinstance(m, PrometheusMiddleware))
    return next(found, "conveyor")


def _listen(registry: CollectorRegistry, port: int, host: str) -> MetricsServer:
    try:
        server, thread = _prometheus().start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} ({exc}): another process may listen "
            "there, or the address is not this machine's; choose another port or host"
        ) from exc
    return MetricsServer(host, server.server_address[1], server, thread)


def register_queue_metrics(
    app: Conveyor, registry: CollectorRegistry | None = None, *, namespace: str = "conveyor"
) -> None:
    """Report the broker's gauges (``QueueMetrics``) in ``registry`` (the default one
    unless given), read from the broker at each scrape. Once per registry; ``serve`` and
    ``serve_exporter`` call it."""
    prom = _prometheus()
    registry = prom.REGISTRY if registry is None else registry
    with contextlib.suppress(ValueError):  # there already: one read per scrape is enough
        registry.register(QueueMetrics(app, namespace))


@dataclasses.dataclass
class _Reading:
    """What one scrape read from the broker."""

    depths: list[tuple[str, str, int]]  # (queue, status, jobs)
    oldest: list[tuple[str, float]]  # (queue, seconds the job next in line has waited)
    workers: int


class QueueMetrics:
    """A prometheus_client collector of the broker's gauges, read at each scrape:
    ``conveyor_queue_jobs{queue,status}``, ``conveyor_queue_oldest_age_seconds{queue}``,
    ``conveyor_workers`` and ``conveyor_broker_up``. One ``stats()`` call, one
    ``entries(queued, queue, limit=1)`` per queue that has queued jobs, and one
    ``workers()`` call. A failed read never fails the scrape: it is reported as
    ``conveyor_broker_up 0`` without the other gauges (no stale numbers), and logged at
    WARNING when it starts failing or fails otherwise (not at every scrape), at INFO when
    the broker answers again."""

    def __init__(self, app: Conveyor, namespace: str = "conveyor") -> None:
        self._app = app
        self._namespace = namespace
        self._failing = ""  # the error the last read failed with

    def describe(self) -> Iterator[Any]:  # lets the registry check names without a read
        return self._families(None)

    def collect(self) -> Iterator[Any]:
        return self._families(self.read_or_log(), read=True)

    def read_or_log(self, fatal: tuple[type[Exception], ...] = ()) -> _Reading | None:
        """``read()``, or None when the broker failed (logged as said above); an error of
        one of the ``fatal`` types propagates instead."""
        try:
            reading = self.read()
        except fatal:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._failing:
                log.warning("cannot read the broker for /metrics (broker_up 0): %s", error)
            self._failing = error
            return None
        if self._failing:
            log.info("the broker answers again (broker_up 1)")
            self._failing = ""
        return reading

    def read(self) -> _Reading:
        """The broker's numbers now (its errors propagate). A broker not open yet is opened
        as a look (``create=False``: no SQLite file or PostgreSQL schema made), and again at
        the next read while it cannot be: one down when the exporter started is served as
        broker_up 0 until it answers, as one that goes down later."""
        broker = self._app.open(create=False)
        stats = broker.stats()
        now = self._app.clock.time()
        oldest = []
        for s in stats:
            head = broker.entries(JobStatus.QUEUED, s.queue, limit=1) if s.queued else []
            # The job fetch hands out next, the oldest of the queue when its jobs share a
            # priority; the clocks of the broker and this process may disagree a little.
            oldest.append((s.queue, max(now - head[0].at, 0.0) if head else 0.0))
        depths = [(s.queue, status, getattr(s, status)) for s in stats for status in QUEUE_STATUSES]
        return _Reading(depths, oldest, len(broker.workers()))

    def _families(self, reading: _Reading | None, read: bool = False) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        ns = f"{self._namespace}_" if self._namespace else ""  # as prometheus_client joins it
        depth = GaugeMetricFamily(
            f"{ns}queue_jobs", "Jobs in the broker, by queue and status.",
            labels=["queue", "status"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            f"{ns}queue_oldest_age_seconds",
            "How long the job next in line of each queue has been queued (0: none is).",
            labels=["queue"],
        )
        workers = GaugeMetricFamily(f"{ns}workers", "Live workers.")
        up = GaugeMetricFamily(f"{ns}broker_up", "1 if the broker answered the last read.")
        if read:
            up.add_metric([], 0 if reading is None else 1)
        if reading is not None:
            for queue, status, jobs in reading.depths:
                depth.add_metric([queue, status], jobs)
            for queue, age in reading.oldest:
                oldest.add_metric([queue], age)
            workers.add_metric([], reading.workers)
        yield from (depth, oldest, workers, up)
