"""OpenTelemetry tracing for Conveyor (``pip install 'conveyor[opentelemetry]'``).

::

    from conveyor.contrib.opentelemetry import instrument

    instrument(app)   # in the module that makes the app: producers and workers both run it

Each enqueue is a ``send <queue>`` span (kind PRODUCER) in the caller's trace, and its
context travels in the job's headers (W3C ``traceparent``/``tracestate``, through the
global propagator); each run is a ``process <queue>`` span (kind CONSUMER) whose parent is
that send span, in whichever process, pool or broker the job runs, and which links to it
as the messaging conventions ask. The run span is the current span while the task runs
(its own spans, logs and outgoing calls are its children), inside an ``async def`` task
too. A run that raises records the exception and sets the span's status to ERROR. A
retry's run is another child of the same send span.

Span names and attributes follow OpenTelemetry's semantic conventions for messaging:
``messaging.system`` = ``conveyor``, ``messaging.operation.type`` and
``messaging.operation.name`` = ``send`` or ``process``, ``messaging.destination.name`` =
the queue, ``messaging.message.id`` = the job id, plus ``messaging.conveyor.task`` and
(on runs) ``messaging.conveyor.attempt``.

Spans go to the global tracer provider unless ``tracer_provider`` is given; configure the
SDK (exporter, sampler) in the producer and in the worker as for any other library.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..middleware import Message, Middleware, Run
from ..worker._describe import short_name, text_of
from . import INTERRUPTIONS, described, require

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from .._app import Conveyor

__all__ = ["SYSTEM", "OpenTelemetryMiddleware", "instrument"]

SYSTEM = "conveyor"


def _otel() -> Any:
    return require("opentelemetry.trace", "opentelemetry", user="conveyor.contrib.opentelemetry")


class OpenTelemetryMiddleware(Middleware):
    """Traces every job from ``delay`` to its run (see the module docstring)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        trace = _otel()
        from opentelemetry import context, propagate
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        self._trace, self._context, self._propagate = trace, context, propagate
        self._link, self._kind = Link, SpanKind
        self._status: Any = Status
        self._failed: Any = StatusCode.ERROR
        self.tracer = trace.get_tracer("conveyor", __version__, tracer_provider=tracer_provider)
        # Spans between the two halves of a hook pair, by the message they are about (the
        # same object reaches both halves, in the same thread or task).
        self._open: dict[int, tuple[Span, Any]] = {}
        self._lock = threading.Lock()

    # -- producer ----------------------------------------------------------------------------

    def before_enqueue(self, message: Message) -> None:
        span = self.tracer.start_span(
            f"send {message.queue}",
            kind=self._kind.PRODUCER,
            attributes=self._attributes(message, "send"),
        )
        self._propagate.inject(message.headers, context=self._trace.set_span_in_context(span))
        with self._lock:
            self._open[id(message)] = (span, None)

    def after_enqueue(self, message: Message, error: BaseException | None) -> None:
        with self._lock:
            found = self._open.pop(id(message), None)
        if found is not None:
            self._end(found[0], error)

    # -- where the task runs ---------------------------------------------------------------

    def before_run(self, message: Message) -> None:
        parent = self._propagate.extract(message.headers)
        sent = self._trace.get_current_span(parent).get_span_context()
        attributes = self._attributes(message, "process")
        attributes["messaging.conveyor.attempt"] = message.attempt
        span = self.tracer.start_span(
            f"process {message.queue}",
            context=parent,
            kind=self._kind.CONSUMER,
            attributes=attributes,
            links=[self._link(sent)] if sent.is_valid else None,
        )
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        with self._lock:
            self._open[id(message)] = (span, token)

    def after_run(self, message: Message, run: Run) -> None:
        with self._lock:
            found = self._open.pop(id(message), None)
        if found is None:
            return
        span, token = found
        try:
            self._end(span, run.error)
        finally:
            self._context.detach(token)

    # -- helpers -----------------------------------------------------------------------------

    def _attributes(self, message: Message, operation: str) -> dict[str, Any]:
        return {
            "messaging.system": SYSTEM,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            "messaging.destination.name": message.queue,
            "messaging.message.id": message.id,
            "messaging.conveyor.task": message.task,
        }

    def _end(self, span: Span, error: BaseException | None) -> None:
        try:
            if error is not None:
                self._record(span, error)
        finally:
            span.end()

    def _record(self, span: Span, error: BaseException) -> None:
        """The exception event and the ERROR status; a task's exception whose own code
        raises as it is read is recorded as the worker describes it."""
        try:
            span.record_exception(error)
        except BaseException as exc:
            if issubclass(type(exc), INTERRUPTIONS):
                raise
            failed = described(error)
            span.add_event("exception", {
                "exception.type": failed.remote_type,
                "exception.message": failed.remote_message,
                "exception.stacktrace": failed.remote_traceback,
            })  # fmt: skip
        text = f"{short_name(type(error))}: {text_of(error)}"
        span.set_status(self._status(self._failed, text))


def instrument(
    app: Conveyor, tracer_provider: TracerProvider | None = None
) -> OpenTelemetryMiddleware:
    """Add an ``OpenTelemetryMiddleware`` to ``app`` and return it."""
    middleware = OpenTelemetryMiddleware(tracer_provider)
    app.add_middleware(middleware)
    return middleware
