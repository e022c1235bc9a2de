"""Middleware around tasks that misbehave: the hooks see the outcome the worker computes
(hostile exceptions, results over the cap, values that cannot be stored), a middleware that
reads them carelessly costs nothing but its own log line, and the contrib middleware report
them. Every pool, one slot each; the tasks come from ``tests/hostile.py``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import sentry_sdk
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from conveyor import Middleware, TaskFailed
from conveyor.contrib.opentelemetry import OpenTelemetryMiddleware
from conveyor.contrib.prometheus import PrometheusMiddleware
from conveyor.contrib.sentry import SentryMiddleware
from conveyor.middleware import Message, Outcome, Run
from conveyor.worker import Worker
from conveyor.worker._describe import describe
from hostile import TASKS, exception_specs, failure, unprintable

from .test_contrib_sentry import Kept

CAP = 4096
MODULE = "mw_hostile_tasks"
APP = f"""
from conveyor import Conveyor, Middleware

CARELESS = []


class Careless(Middleware):
    \"\"\"Reads what it is given the careless way: str() of an error, repr() of a value.\"\"\"

    def after_run(self, message, run):
        CARELESS.append(str(run.error) if run.error is not None else repr(run.value)[:40])

    def on_outcome(self, message, outcome):
        CARELESS.append(str(outcome.error))


app = Conveyor("memory://", max_result={CAP}, middleware=[Careless()])
"""
SLOW = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Seen(Middleware):
    """What the worker process's hooks were given, by job id."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.outcomes: dict[str, list[Outcome]] = {}
        self.lock = threading.Lock()

    def after_run(self, message: Message, run: Run) -> None:
        self.runs[message.id] = run

    def on_outcome(self, message: Message | None, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.setdefault(outcome.job_id, []).append(outcome)


class Observed:
    """What the worker of one pool was seen doing. Not a dataclass: Hypothesis prints the
    arguments of examples, and the events and spans grow with each one (megabytes)."""

    def __init__(
        self,
        pool: str,
        seen: Seen,
        events: list[dict[str, Any]],
        spans: InMemorySpanExporter,
        prometheus: PrometheusMiddleware,
    ) -> None:
        self.pool, self.seen, self.events = pool, seen, events
        self.spans, self.prometheus = spans, prometheus

    def __repr__(self) -> str:
        return f"<Observed {self.pool} pool>"

    def event(self, job_id: str) -> dict[str, Any]:
        (event,) = [e for e in self.events if e["tags"]["conveyor.job_id"] == job_id]
        return event

    def failed(self, task: str) -> float:
        value = self.prometheus.registry.get_sample_value(
            "conveyor_jobs_total", {"task": task, "queue": "default", "status": "failed"}
        )
        return value or 0.0


@pytest.fixture(scope="module")
def tasks(write_module: Callable[[str, str], ModuleType]) -> ModuleType:
    return write_module(MODULE, APP + TASKS)


@pytest.fixture(scope="module", params=["threads", "async", "processes"])
def observed(request: pytest.FixtureRequest, tasks: ModuleType) -> Iterator[Observed]:
    """A one-slot worker of each pool whose app has the careless middleware (in the child
    too), a recorder, and Sentry, OpenTelemetry and Prometheus (in the worker process)."""
    transport = Kept()
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=transport,
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    seen = Seen()
    prometheus = PrometheusMiddleware(registry=CollectorRegistry())
    ours = [seen, SentryMiddleware(), OpenTelemetryMiddleware(provider), prometheus]
    kept = tasks.app.middleware
    for m in ours:
        tasks.app.add_middleware(m)
    pool: str = request.param
    worker = Worker(tasks.app, pool=pool, concurrency=1, module=MODULE, grace=0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield Observed(pool, seen, transport.events, spans, prometheus)
    finally:
        worker.stop(graceful=False)
        thread.join(20)
        tasks.app.middleware = kept
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
        assert not thread.is_alive(), "the worker did not stop"


@SLOW
@given(spec=exception_specs(), is_async=st.booleans())
# Each once failed a library's reading of the exception (Sentry dropped the event, or its
# reading raised out of the hook): a str() that raises the exception's own BaseException
# type, a module that is not a str, a __class__ property that raises.
@example(spec={"base": "BaseException", "str": ["raise_self"]}, is_async=False)
@example(spec={"base": "Exception", "module": "nonstr"}, is_async=False)
@example(spec={"base": "ValueError", "klass": True, "args": "SystemExit"}, is_async=True)
def test_a_hostile_exception_reaches_every_hook_as_the_worker_described_it(
    tasks: ModuleType, observed: Observed, spec: dict[str, Any], is_async: bool
) -> None:
    task = tasks.afail if is_async else tasks.fail
    before = observed.failed(task.name)
    job = task.delay(spec)
    error = failure(job)  # the job failed as it does without middleware
    (outcome,) = observed.seen.outcomes[job.id]
    assert outcome.status == "failed"
    if observed.pool == "processes":  # raised in the child: its description
        assert isinstance(outcome.error, TaskFailed)
        assert outcome.error.remote_type == error.remote_type
    else:  # the exception itself, the one the result describes
        assert outcome.error is not None and outcome.error is observed.seen.runs[job.id].error
        assert describe(outcome.error)[0].type == error.remote_type
    assert observed.failed(task.name) == before + 1
    event = observed.event(job.id)
    assert event["tags"]["conveyor.status"] == "failed"
    if observed.pool != "processes":
        (span,) = [s for s in observed.spans.get_finished_spans() if s.name == "process default"
                   and s.attributes and s.attributes["messaging.message.id"] == job.id]  # fmt: skip
        assert span.status.status_code is StatusCode.ERROR
    assert tasks.fine.delay(1).result(timeout=30) == 1  # the slot lives on


def test_a_careless_middleware_costs_only_its_own_log_line(
    tasks: ModuleType, observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    spec = {"base": "ValueError", "str": ["raise", "SystemExit"], "klass": True}
    assert unprintable(spec)
    job = tasks.fail.delay(spec)
    error = failure(job)
    assert error.remote_message.startswith("<unprintable Hostile (str() raised SystemExit)>")
    assert len(observed.seen.outcomes[job.id]) == 1
    assert tasks.fine.delay(4).result(timeout=30) == 4
    assert "middleware Careless: after_run raised" in caplog.text  # a child's line too
    # The worker process is given the exception itself, except from a child (a TaskFailed).
    raised = "middleware Careless: on_outcome raised" in caplog.text
    assert raised == (observed.pool != "processes")


UNSTORED = [  # what the task returns, and the type of the failure
    ("big", "conveyor._errors.ResultTooLarge"),
    ("weird", "conveyor._errors.SerializationError"),
    ("coroutine", "builtins.TypeError"),
]


@pytest.mark.parametrize(("kind", "remote_type"), UNSTORED)
def test_a_result_that_cannot_be_stored_is_a_failure_the_hooks_see_described(
    tasks: ModuleType, observed: Observed, kind: str, remote_type: str
) -> None:
    job = tasks.give.delay(kind, 10 * CAP)
    assert failure(job).remote_type == remote_type
    (outcome,) = observed.seen.outcomes[job.id]
    assert outcome.status == "failed" and isinstance(outcome.error, TaskFailed)
    assert outcome.error.remote_type == remote_type
    if observed.pool != "processes":
        assert observed.seen.runs[job.id].error is None  # the task itself returned
    event = observed.event(job.id)
    assert event["fingerprint"] == ["conveyor", f"{MODULE}:give", remote_type]
