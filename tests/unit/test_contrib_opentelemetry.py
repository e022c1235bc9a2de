"""``conveyor.contrib.opentelemetry`` in one process on memory://, with the SDK's in-memory
exporter (across a real worker process: tests/integration/test_observability.py)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from types import ModuleType

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conveyor import ConfigurationError, Conveyor, JobCancelled, JobStatus, TaskFailed
from conveyor.contrib.opentelemetry import DEDUPLICATED, OpenTelemetryMiddleware, instrument
from conveyor.testing import drain
from conveyor.worker import Worker

from .test_worker import running


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


@pytest.mark.parametrize("pool", ["threads", "async"])
def test_the_send_span_is_the_parent_of_the_process_span(
    pool: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Conveyor("memory://")
    instrument(app, tracer_provider=provider)

    @app.task(name="emails.send", queue="mail")
    def send(to: str) -> int:
        with provider.get_tracer("inside").start_as_current_span("smtp"):
            pass
        return current_span_id()

    @app.task(name="emails.send_async", queue="mail")
    async def send_async(to: str) -> int:
        await asyncio.sleep(0)
        return current_span_id()

    with provider.get_tracer("web").start_as_current_span("POST /signup") as request:
        jobs = [send.delay("a@example.com"), send_async.delay("b@example.com")]
    Worker(app, ["mail"], pool=pool, concurrency=2, grace=0).drain(timeout=30)
    spans = exporter.get_finished_spans()

    sends = named(spans, "send mail")
    processes = named(spans, "process mail")
    assert len(sends) == len(processes) == 2
    trace_id = request.get_span_context().trace_id
    for job in jobs:
        (sent,) = [s for s in sends if s.attributes["messaging.message.id"] == job.id]
        (ran,) = [s for s in processes if s.attributes["messaging.message.id"] == job.id]
        assert sent.kind is SpanKind.PRODUCER and ran.kind is SpanKind.CONSUMER
        assert sent.parent is not None
        assert sent.parent.span_id == request.get_span_context().span_id
        assert ran.parent is not None and ran.parent.span_id == sent.context.span_id
        assert ran.context.trace_id == sent.context.trace_id == trace_id
        assert [link.context.span_id for link in ran.links] == [sent.context.span_id]
        assert dict(sent.attributes) == {
            "messaging.system": "conveyor",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": "mail",
            "messaging.message.id": job.id,
            "messaging.conveyor.task": sent.attributes["messaging.conveyor.task"],
        }
        assert ran.attributes["messaging.operation.type"] == "process"
        assert ran.attributes["messaging.conveyor.attempt"] == 0
        assert ran.status.status_code is StatusCode.UNSET
        # The task ran inside its process span.
        assert job.result() == ran.context.span_id
    (smtp,) = named(spans, "smtp")
    assert smtp.parent is not None
    assert smtp.parent.span_id in {s.context.span_id for s in processes}


def test_a_failed_run_records_the_exception_and_an_error_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Conveyor("memory://", middleware=[OpenTelemetryMiddleware(provider)])

    @app.task(name="charge", retries=1, backoff=0.001)
    def charge() -> None:
        raise ValueError("card declined")

    job = charge.delay()
    drain(app)  # and its retry
    with pytest.raises(TaskFailed):
        job.result(timeout=30)
    spans = exporter.get_finished_spans()
    (sent,) = named(spans, "send default")
    runs = named(spans, "process default")
    assert [r.attributes["messaging.conveyor.attempt"] for r in runs] == [0, 1]
    for ran in runs:
        assert ran.parent is not None and ran.parent.span_id == sent.context.span_id
        assert ran.status.status_code is StatusCode.ERROR
        assert ran.status.description == "ValueError: card declined"
        (event,) = ran.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "ValueError"
    assert sent.status.status_code is StatusCode.UNSET


def test_a_deduplicated_send_s_span_names_the_live_job(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Conveyor("memory://", middleware=[OpenTelemetryMiddleware(provider)])

    @app.task(name="report")
    def report(day: str) -> str:
        return day

    monday = report.options(key="report-mon")
    first, again = monday.delay("mon"), monday.delay("mon")
    assert again.id == first.id
    sent, deduplicated = named(exporter.get_finished_spans(), "send default")
    assert sent.attributes is not None and deduplicated.attributes is not None
    assert sent.attributes["messaging.message.id"] == first.id
    assert DEDUPLICATED not in sent.attributes
    assert deduplicated.attributes["messaging.message.id"] == first.id  # the job that exists
    assert deduplicated.attributes[DEDUPLICATED] is True
    assert deduplicated.status.status_code is StatusCode.UNSET  # the caller got its job


def test_a_failed_send_ends_its_span_with_the_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Conveyor("memory://", max_payload=300, middleware=[OpenTelemetryMiddleware(provider)])

    @app.task
    def big(s: str) -> None: ...

    with pytest.raises(Exception, match="over the"):
        big.delay("x" * 1000)
    (sent,) = named(exporter.get_finished_spans(), "send default")
    assert sent.status.status_code is StatusCode.ERROR


PROCESS_TASKS = """
import time
from conveyor import Conveyor

app = Conveyor("memory://")


@app.task(name="slow", retries=0, timeout=0.3)
def slow() -> None:
    time.sleep(2)


@app.task(name="nap", retries=0)
def nap() -> None:
    time.sleep(30)


@app.task(name="boom", retries=0)
def boom() -> None:
    raise ValueError("no")
"""


@pytest.mark.timeout(90)
def test_a_killed_child_s_run_is_traced_by_the_worker(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    write_module: Callable[[str, str], ModuleType],
) -> None:
    """``--pool processes``: a child killed at the job's time limit, or for a cancel, never
    ends its run span; the worker records it from the outcome, once, as the child would
    have: child of the send span, ERROR. (The children here are not traced: the module
    adds no middleware, so each span seen is the worker process's.)"""
    tasks = write_module("otel_proc_tasks", PROCESS_TASKS)
    tasks.app.add_middleware(OpenTelemetryMiddleware(provider))  # the worker process's only
    slow, napping, boom = tasks.slow.delay(), tasks.nap.delay(), tasks.boom.delay()
    worker = Worker(tasks.app, pool="processes", concurrency=2, module="otel_proc_tasks")
    with running(worker):
        with pytest.raises(TaskFailed, match=r"time limit of 0\.3 s"):
            slow.result(timeout=30)
        with pytest.raises(TaskFailed, match="ValueError"):
            boom.result(timeout=30)  # the child saw it end: its span, none from the worker
        deadline = time.monotonic() + 30
        while napping.status is not JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert napping.cancel()
        with pytest.raises(JobCancelled):
            napping.result(timeout=30)
    spans = exporter.get_finished_spans()
    sent = {s.attributes["messaging.message.id"]: s for s in named(spans, "send default")}
    runs = named(spans, "process default")
    assert sorted(r.attributes["messaging.message.id"] for r in runs) == sorted(
        [slow.id, napping.id]
    )
    for job, error, text in [
        (slow, "TaskFailed", "the job ran past its time limit of 0.3 s; the process running it"),
        (napping, "JobCancelled", "cancelled while running (cancel)"),
    ]:
        (ran,) = [r for r in runs if r.attributes["messaging.message.id"] == job.id]
        assert ran.kind is SpanKind.CONSUMER
        assert ran.parent is not None and ran.parent.span_id == sent[job.id].context.span_id
        assert ran.context.trace_id == sent[job.id].context.trace_id
        assert [link.context.span_id for link in ran.links] == [sent[job.id].context.span_id]
        assert ran.attributes["messaging.conveyor.attempt"] == 0
        assert ran.status.status_code is StatusCode.ERROR
        assert ran.status.description is not None and text in ran.status.description
        (event,) = ran.events
        assert event.attributes is not None
        assert event.attributes["exception.type"] == f"conveyor._errors.{error}"
        assert ran.start_time is not None and ran.end_time is not None
    (timed,) = [r for r in runs if r.attributes["messaging.message.id"] == slow.id]
    assert timed.start_time is not None and timed.end_time is not None
    assert 0.25 <= (timed.end_time - timed.start_time) / 1e9 < 2  # killed at its limit


def test_without_a_sdk_nothing_is_recorded_and_jobs_still_run() -> None:
    app = Conveyor("memory://")
    instrument(app)  # the global provider: the API's no-op one unless an SDK is set up

    @app.task
    def ok() -> int:
        return 1

    job = ok.delay()
    Worker(app, grace=0).drain(timeout=30)
    assert job.result() == 1


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'conveyor\[opentelemetry\]'"):
        OpenTelemetryMiddleware()
