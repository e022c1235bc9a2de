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

With ``--pool processes`` the run span is recorded in the child. A child the worker kills
(at the job's time limit, for a cancel, at the end of a shutdown's grace) or that dies
never ends its span, so the worker process records that run's ``process`` span from the
outcome it sees: same parent, attributes and link, timed by ``outcome.duration``, status
ERROR (the time limit's ``TaskFailed`` recorded as its exception, a cancel as a
``JobCancelled``; a run handed back or whose process died, ``released``, with its status
alone).

Span names and attributes follow OpenTelemetry's semantic conventions for messaging:
``messaging.system`` = ``conveyor``, ``messaging.operation.type`` and
``messaging.operation.name`` = ``send`` or ``process``, ``messaging.destination.name`` =
the queue, ``messaging.message.id`` = the job id, plus ``messaging.conveyor.task`` and
(on runs) ``messaging.conveyor.attempt``. A send the broker deduplicated (a ``key=`` that
matches a live job) wrote nothing: its span names the live job the caller got, and has
``messaging.conveyor.deduplicated`` = true.

Spans go to the global tracer provider unless ``tracer_provider`` is given; configure the
SDK (exporter, sampler) in the producer and in the worker as for any other library.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._errors import JobCancelled, TaskFailed
from ..middleware import Message, Middleware, Outcome, Run, WorkerProcess
from ..worker._describe import short_name, text_of
from . import INTERRUPTIONS, described, require

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from .._app import Conveyor

__all__ = ["DEDUPLICATED", "SYSTEM", "OpenTelemetryMiddleware", "instrument"]

SYSTEM = "conveyor"
DEDUPLICATED = "messaging.conveyor.deduplicated"  # on a send span that wrote no job


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
        self._parents = 0  # worker sessions of --pool processes running in this process

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

    def on_deduplicated(self, message: Message, job_id: str) -> None:
        with self._lock:
            found = self._open.pop(id(message), None)
        if found is not None:  # the send span names the job the caller got
            span = found[0]
            span.set_attributes({"messaging.message.id": job_id, DEDUPLICATED: True})
            span.end()

    # -- where the task runs ---------------------------------------------------------------

    def before_run(self, message: Message) -> None:
        span, parent = self._process_span(message)
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

    # -- the worker process of --pool processes ---------------------------------------------

    def on_worker_start(self, worker: WorkerProcess) -> None:
        if worker.pool == "processes" and not worker.child:
            with self._lock:
                self._parents += 1

    def on_worker_stop(self, worker: WorkerProcess) -> None:
        if worker.pool == "processes" and not worker.child:
            with self._lock:
                self._parents -= 1

    def on_outcome(self, message: Message | None, outcome: Outcome) -> None:
        """The run span of a child that was killed or died: it never ended its own."""
        if not self._parents or message is None or outcome.duration is None:
            return
        error = _killed(outcome)
        if error is None:
            return
        end = time.time_ns()
        span, _ = self._process_span(message, end - int(outcome.duration * 1e9))
        try:
            if isinstance(error, str):
                span.set_status(self._status(self._failed, error))
            else:
                self._record(span, error)
        finally:
            span.end(end)

    # -- helpers -----------------------------------------------------------------------------

    def _process_span(self, message: Message, start: int | None = None) -> tuple[Span, Any]:
        """A run's span, child of the send span the headers name and linked to it; and
        that parent context."""
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
            start_time=start,
        )
        return span, parent

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


def _killed(outcome: Outcome) -> BaseException | str | None:
    """What ended a ``--pool processes`` run whose child the worker killed, or that died
    (its run span never ended): the error to record, or the status text alone; None for a
    run the child saw to its end (and traced). The worker's verdicts on such runs: a
    cancel, ``cancelled``; the hard time limit's failure, the one ``TaskFailed`` without a
    traceback (the worker observed it; a child's exception always has one); and
    ``released`` (handed back at shutdown, or the process died)."""
    status, error = outcome.status, outcome.error
    if status == "cancelled":
        return JobCancelled(outcome.reason or "cancelled while running")
    if status == "released":
        return "released: its process was stopped or died; the job runs again"
    if (
        status in ("failed", "retried")
        and type(error) is TaskFailed
        and not error.remote_traceback
        and error.remote_type == "builtins.TimeoutError"
    ):
        return error
    return None


def instrument(
    app: Conveyor, tracer_provider: TracerProvider | None = None
) -> OpenTelemetryMiddleware:
    """Add an ``OpenTelemetryMiddleware`` to ``app`` and return it."""
    middleware = OpenTelemetryMiddleware(tracer_provider)
    app.add_middleware(middleware)
    return middleware
