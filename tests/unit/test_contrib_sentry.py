"""``conveyor.contrib.sentry``: what reaches Sentry, through a transport that keeps events in
a list; a test that opens a connection fails."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope as SentryEnvelope
from sentry_sdk.transport import Transport

from conveyor import ConfigurationError, Conveyor, JobDead, TaskFailed, current_job
from conveyor._clock import FakeClock
from conveyor._message import Envelope
from conveyor.contrib.sentry import SentryMiddleware
from conveyor.testing import drain
from conveyor.worker import Worker

from .test_worker import running


class Kept(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: SentryEnvelope) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(event)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every name lookup and connection this process tries is refused and counted; a test
    that tried one fails (the SDK would swallow the refusal)."""
    tried: list[object] = []

    def refuse(*args: object) -> Any:
        tried.append(args[-1] if len(args) < 3 else args[0])
        raise OSError(f"no network in this test (tried {tried[-1]!r})")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield
    assert tried == []


@pytest.fixture
def sent() -> Iterator[list[dict[str, Any]]]:
    transport = Kept()
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=transport,
        default_integrations=False,  # nothing patched process-wide, no log capture
        auto_enabling_integrations=False,
    )
    try:
        yield transport.events
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


def make_app(middleware: SentryMiddleware) -> Conveyor:
    app = Conveyor("memory://", clock=FakeClock(), middleware=[middleware])

    @app.task(name="billing.charge", queue="billing", retries=1)
    def charge(customer: str, cents: int, *, currency: str = "EUR") -> None:
        raise ValueError(f"card declined on attempt {current_job().attempt}")

    @app.task(name="ok")
    def ok() -> int:
        return 1

    return app


def test_a_final_failure_is_reported_with_the_job_and_the_exception(
    sent: list[dict[str, Any]],
) -> None:
    app = make_app(SentryMiddleware())
    job = app.registry["billing.charge"].delay("cus_42", 1999, currency="USD")
    app.registry["ok"].delay()
    drain(app)
    (event,) = sent  # the retried attempt and the success are not reported
    assert event["level"] == "error" and event["transaction"] == "billing.charge"
    assert event["tags"] == {
        "conveyor.task": "billing.charge",
        "conveyor.queue": "billing",
        "conveyor.status": "failed",
        "conveyor.job_id": job.id,
    }
    context = event["contexts"]["conveyor job"]
    assert context["id"] == job.id and context["attempt"] == 1 and context["retries"] == 1
    assert context["args"] == ["cus_42", 1999] and context["kwargs"] == {"currency": "USD"}
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "ValueError"
    assert exception["value"] == "card declined on attempt 1"
    assert exception["stacktrace"]["frames"]  # the real exception, with its stack


def test_a_job_s_event_carries_what_it_set_and_nothing_an_earlier_job_set(
    sent: list[dict[str, Any]],
) -> None:
    """Each run writes in a scope of its own: on one thread, a job that set a user, a tag
    and a breadcrumb and succeeded leaves nothing for the next job's event."""
    app = Conveyor("memory://", clock=FakeClock(), middleware=[SentryMiddleware()])

    @app.task(name="signup")
    def signup(user: str) -> None:
        sentry_sdk.set_user({"id": user})
        sentry_sdk.set_tag("tenant", "acme")
        sentry_sdk.add_breadcrumb(message=f"signup of {user}")

    @app.task(name="charge")
    def charge(customer: str) -> None:
        sentry_sdk.set_tag("customer", customer)
        sentry_sdk.add_breadcrumb(message=f"charging {customer}")
        raise ValueError("card declined")

    signup.delay("u-1")
    charge.delay("cus_42")
    drain(app, concurrency=1)
    (event,) = sent
    assert event["tags"]["conveyor.task"] == "charge"
    assert event["tags"]["customer"] == "cus_42" and "tenant" not in event["tags"]
    assert "user" not in event
    crumbs = [c["message"] for c in event["breadcrumbs"]["values"]]
    assert crumbs == ["charging cus_42"]
    assert sentry_sdk.Scope.get_isolation_scope()._user is None  # the thread's own scope untouched


def test_arguments_can_be_left_out_and_retries_reported(sent: list[dict[str, Any]]) -> None:
    app = make_app(SentryMiddleware(include_args=False, report_retries=True))
    app.registry["billing.charge"].delay("cus_42", 1999)
    drain(app)
    retry, failure = sent
    assert retry["level"] == "warning" and retry["tags"]["conveyor.status"] == "retried"
    assert failure["level"] == "error" and failure["tags"]["conveyor.status"] == "failed"
    for event in sent:
        assert "args" not in event["contexts"]["conveyor job"]
        assert "kwargs" not in event["contexts"]["conveyor job"]
    assert "retry in" in retry["contexts"]["conveyor job"]


MARKER = "4111-1111-1111-1111"  # a card number: it must reach no event


@pytest.mark.parametrize("include_args", [False, True])
def test_without_args_no_frame_of_the_event_carries_them(
    sent: list[dict[str, Any]], include_args: bool
) -> None:
    """The SDK sends each frame's local variables by default (``include_local_variables``):
    the task's frame holds its arguments, Conveyor's frames the message. Left out with
    ``include_args=False``, everywhere in the event; the stack itself stays."""
    app = Conveyor("memory://", clock=FakeClock(), middleware=[SentryMiddleware(include_args)])

    @app.task(name="billing.charge", retries=0)
    def charge(card: str, *, holder: str) -> None:
        try:
            raise LookupError("no such card")
        except LookupError:
            sentry_sdk.capture_exception()  # the task's own event, from inside the run
        raise ValueError("card declined")

    charge.delay(MARKER, holder=MARKER[::-1])
    drain(app)
    told, reported = sent
    assert "tags" not in told and reported["tags"]["conveyor.status"] == "failed"
    (own,) = told["exception"]["values"]
    (exception,) = reported["exception"]["values"]
    frames = exception["stacktrace"]["frames"]
    assert frames[-1]["function"] == "charge" and frames[-1]["lineno"] > 0
    assert any(frame["function"] == "invoke" for frame in frames)  # the worker's frames too
    assert own["stacktrace"]["frames"][-1]["function"] == "charge"
    blob = json.dumps(sent)
    if include_args:  # the SDK's default: the arguments are in the frames (the context too)
        assert frames[-1]["vars"]["card"] == repr(MARKER)
        assert own["stacktrace"]["frames"][-1]["vars"]["card"] == repr(MARKER)
        assert MARKER[::-1] in blob
    else:
        assert MARKER not in blob and MARKER[::-1] not in blob
        for event in sent:
            for value in event["exception"]["values"]:
                assert not any("vars" in frame for frame in value["stacktrace"]["frames"])


def test_a_dead_letter_is_reported_with_its_reason(sent: list[dict[str, Any]]) -> None:
    app = make_app(SentryMiddleware())
    app.broker.enqueue([Envelope("garbage", "billing", b"not a job")])
    drain(app)
    (event,) = sent
    assert event["level"] == "error" and event["tags"]["conveyor.status"] == "dead"
    assert event["tags"]["conveyor.task"] == "unknown"
    assert event["message"].startswith("job garbage (unknown) was dead-lettered: undecodable")


def test_a_dead_letter_of_a_readable_job_carries_its_task_and_arguments(
    sent: list[dict[str, Any]],
) -> None:
    app = make_app(SentryMiddleware())
    job = app.enqueue(print, "hello", sep="-")  # builtins is not trusted: dead-lettered
    drain(app)
    with pytest.raises(JobDead):
        job.result()
    (event,) = sent
    assert event["level"] == "error" and event["tags"]["conveyor.status"] == "dead"
    assert event["tags"]["conveyor.task"] == "builtins:print"
    assert event["tags"]["conveyor.job_id"] == job.id
    assert event["message"].startswith(f"job {job.id} (builtins:print) was dead-lettered: ")
    context = event["contexts"]["conveyor job"]
    assert context["attempt"] == 0 and context["reason"] in event["message"]
    assert context["args"] == ["hello"] and context["kwargs"] == {"sep": "-"}


@pytest.mark.parametrize("pool", ["threads", "async"])
def test_in_process_pools_report_the_task_s_own_exception_and_stack(
    sent: list[dict[str, Any]], pool: str
) -> None:
    app = Conveyor("memory://", middleware=[SentryMiddleware()])

    @app.task(name="sync_lookup", retries=0)
    def sync_lookup(sku: str) -> None:
        raise KeyError(sku)

    @app.task(name="async_lookup", retries=0)
    async def async_lookup(sku: str) -> None:
        raise KeyError(sku)

    job = (async_lookup if pool == "async" else sync_lookup).delay("sku-1")
    assert Worker(app, pool=pool, concurrency=2).drain(timeout=30) == 1
    with pytest.raises(TaskFailed):
        job.result()
    (event,) = sent
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "KeyError" and exception["value"] == "'sku-1'"
    functions = [frame["function"] for frame in exception["stacktrace"]["frames"]]
    assert functions[-1] == f"{pool.replace('threads', 'sync')}_lookup"
    assert "fingerprint" not in event  # Sentry groups it by that stack
    assert event["contexts"]["conveyor job"]["args"] == ["sku-1"]


PROCESS_TASKS = """
import time
from conveyor import Conveyor

app = Conveyor("memory://")


@app.task(retries=0)
def lookup(sku: str) -> None:
    raise KeyError(sku)


@app.task(retries=0, timeout=0.5)
def hang() -> None:
    time.sleep(60)
"""


@pytest.mark.timeout(90)
def test_the_processes_pool_reports_the_child_s_failures_from_the_worker(
    sent: list[dict[str, Any]], write_module: Callable[[str, str], ModuleType]
) -> None:
    tasks = write_module("sentry_proc_tasks", PROCESS_TASKS)
    tasks.app.add_middleware(SentryMiddleware())  # the worker process's app only
    failing, hung = tasks.lookup.delay("sku-9"), tasks.hang.delay()
    worker = Worker(tasks.app, pool="processes", concurrency=1, module="sentry_proc_tasks")
    with running(worker):
        with pytest.raises(TaskFailed, match="KeyError"):
            failing.result(timeout=30)
        with pytest.raises(TaskFailed, match="killed"):
            hung.result(timeout=30)
    events = {event["tags"]["conveyor.job_id"]: event for event in sent}
    assert sorted(events) == sorted([failing.id, hung.id])
    failed = events[failing.id]
    (exception,) = failed["exception"]["values"]
    assert exception["type"] == "TaskFailed"  # raised in the child: no stack here
    assert failed["fingerprint"] == ["conveyor", "sentry_proc_tasks:lookup", "builtins.KeyError"]
    context = failed["contexts"]["conveyor job"]
    assert "raise KeyError(sku)" in context["traceback"]  # the child's traceback
    assert context["args"] == ["sku-9"] and context["attempt"] == 0
    killed = events[hung.id]
    assert killed["fingerprint"] == ["conveyor", "sentry_proc_tasks:hang", "builtins.TimeoutError"]


class Unprintable:
    def __str__(self) -> str:
        raise SystemExit("from __str__")


def test_an_exception_sentry_cannot_read_is_reported_as_the_worker_describes_it(
    sent: list[dict[str, Any]],
) -> None:
    """Sentry drops an event it cannot build, saying so only in its own log: an exception
    whose type's module is not a str, say. It is reported by its description instead."""
    hostile = type("Hostile", (Exception,), {"__module__": Unprintable()})
    app = Conveyor("memory://", middleware=[SentryMiddleware()])

    @app.task(name="odd", retries=0)
    def odd() -> None:
        raise hostile("plain message")

    job = odd.delay()
    drain(app)
    with pytest.raises(TaskFailed, match="Hostile: plain message"):
        job.result()
    (event,) = sent
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "TaskFailed" and exception["value"] == "Hostile: plain message"
    assert event["fingerprint"] == ["conveyor", "odd", "Hostile"]
    assert 'raise hostile("plain message")' in event["contexts"]["conveyor job"]["traceback"]


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'conveyor\[sentry\]'"):
        SentryMiddleware()
