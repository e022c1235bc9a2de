"""``conveyor.contrib.sentry``: what reaches Sentry, through a transport that keeps events in
a list (no network)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope as SentryEnvelope
from sentry_sdk.transport import Transport

from conveyor import ConfigurationError, Conveyor, current_job
from conveyor._clock import FakeClock
from conveyor._message import Envelope
from conveyor.contrib.sentry import SentryMiddleware
from conveyor.testing import drain


class Kept(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: SentryEnvelope) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(event)


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


def test_a_dead_letter_is_reported_with_its_reason(sent: list[dict[str, Any]]) -> None:
    app = make_app(SentryMiddleware())
    app.broker.enqueue([Envelope("garbage", "billing", b"not a job")])
    drain(app)
    (event,) = sent
    assert event["level"] == "error" and event["tags"]["conveyor.status"] == "dead"
    assert event["tags"]["conveyor.task"] == "unknown"
    assert event["message"].startswith("job garbage (unknown) was dead-lettered: undecodable")


def test_a_remote_failure_is_grouped_by_task_and_remote_type(sent: list[dict[str, Any]]) -> None:
    from conveyor import TaskFailed
    from conveyor.middleware import Outcome

    middleware = SentryMiddleware()
    error = TaskFailed("builtins.KeyError", "'sku'", "Traceback ...\nKeyError: 'sku'", "j1")
    outcome = Outcome("j1", "default", "shop.order", "failed", 0.5, error, "builtins.KeyError")
    middleware.on_failure(None, outcome)  # type: ignore[arg-type]  # as a child's failure
    (event,) = sent
    assert event["fingerprint"] == ["conveyor", "shop.order", "builtins.KeyError"]
    assert event["contexts"]["conveyor job"]["traceback"].endswith("KeyError: 'sku'")


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'conveyor\[sentry\]'"):
        SentryMiddleware()
