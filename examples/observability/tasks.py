"""Tasks with the three integrations and a middleware of our own:
`conveyor worker tasks --metrics-port 9100` runs them.

* Prometheus: the worker serves /metrics on the --metrics-port;
* OpenTelemetry: each process writes its spans, one JSON line each, to spans.jsonl here
  (point the SDK at your collector instead: an OTLP exporter in ``tracing()``);
* Sentry: reports failures when SENTRY_DSN is set (without it the SDK sends nothing);
* ``TenantMiddleware``: the tenant a request runs for travels with its jobs, in a header.
"""

from __future__ import annotations

import contextvars
import os
import pathlib

import sentry_sdk
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from conveyor import Conveyor, Middleware
from conveyor.contrib.opentelemetry import instrument
from conveyor.contrib.prometheus import PrometheusMiddleware
from conveyor.contrib.sentry import SentryMiddleware
from conveyor.middleware import Message, Run

SPANS = pathlib.Path(__file__).with_name("spans.jsonl")

# Which customer the code runs for: set by the web app per request, and by the middleware
# below around each job, so the task (and its log lines) know it too.
tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)


class TenantMiddleware(Middleware):
    """Carries ``tenant`` from the code that enqueues a job to the code that runs it."""

    def before_enqueue(self, message: Message) -> None:
        current = tenant.get()
        if current is not None:
            message.headers["tenant"] = current

    def before_run(self, message: Message) -> None:
        # Runs in the job's own context (its thread, asyncio task or child process).
        tenant.set(message.headers.get("tenant"))

    def after_run(self, message: Message, run: Run) -> None:
        tenant.set(None)  # this thread runs other tenants' jobs next


def tracing() -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    out = SPANS.open("a")  # one line per span, from every process that imports this module
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


sentry_sdk.init(dsn=os.environ.get("SENTRY_DSN"))  # no DSN: Sentry stays off

provider = tracing()
app = Conveyor(middleware=[TenantMiddleware(), PrometheusMiddleware(), SentryMiddleware()])
instrument(app, tracer_provider=provider)


@app.task
def invoice(order: int) -> str:
    return f"invoice for order {order} of {tenant.get()}"


@app.task(retries=1, backoff=0.1)
def charge(order: int) -> str:
    if order % 2:
        raise ValueError(f"card declined for order {order}")
    return f"charged order {order} of {tenant.get()}"
