"""``conveyor.contrib.prometheus``: what the metrics count, in-process on memory:// (the
``/metrics`` endpoint of a real worker is in tests/integration/test_observability.py)."""

from __future__ import annotations

import logging
import sys

import pytest
from prometheus_client import CollectorRegistry, Counter

from conveyor import BrokerUnavailable, ConfigurationError, Conveyor, current_job
from conveyor._clock import FakeClock
from conveyor._message import Envelope, WorkerInfo
from conveyor.contrib.prometheus import PrometheusMiddleware, register_queue_metrics
from conveyor.testing import drain


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_jobs_are_counted_by_task_queue_and_status() -> None:
    registry = CollectorRegistry()
    app = Conveyor("memory://", clock=FakeClock(), middleware=[PrometheusMiddleware(registry)])

    @app.task(name="ok", queue="fast")
    def ok(i: int) -> int:
        return i

    @app.task(name="flaky", retries=2, backoff=1)
    def flaky() -> int:
        if current_job().attempt < 2:
            raise ValueError("not yet")
        return 2

    @app.task(name="doomed")
    def doomed() -> None:
        raise KeyError("never")

    for i in range(5):
        ok.delay(i)
    flaky.delay()
    doomed.delay()
    app.broker.enqueue([Envelope("garbage", "default", b"not a job")])
    drain(app)

    def jobs(task: str, queue: str, status: str) -> float:
        return sample(registry, "conveyor_jobs_total", task=task, queue=queue, status=status)

    assert jobs("ok", "fast", "succeeded") == 5
    assert jobs("flaky", "default", "retried") == 2
    assert jobs("flaky", "default", "succeeded") == 1
    assert jobs("doomed", "default", "failed") == 1
    assert jobs("unknown", "default", "dead") == 1
    assert sample(registry, "conveyor_jobs_enqueued_total", task="ok", queue="fast") == 5
    assert sample(registry, "conveyor_jobs_enqueued_total", task="flaky", queue="default") == 1
    runs = sample(registry, "conveyor_job_duration_seconds_count", task="flaky", queue="default")
    assert runs == 3  # every run, retried or not; the dead letter never ran
    assert sample(registry, "conveyor_jobs_in_progress", queue="fast") == 0
    assert sample(registry, "conveyor_jobs_in_progress", queue="default") == 0


def test_a_send_deduplicated_by_its_key_is_not_counted_as_enqueued() -> None:
    registry = CollectorRegistry()
    app = Conveyor("memory://", clock=FakeClock(), middleware=[PrometheusMiddleware(registry)])

    @app.task(name="report")
    def report(day: str) -> str:
        return day

    monday = report.options(key="report-mon")
    first, again = monday.delay("mon"), monday.delay("mon")
    assert again.id == first.id  # one job: the second send wrote nothing
    report.delay("tue")
    enqueued = sample(registry, "conveyor_jobs_enqueued_total", task="report", queue="default")
    assert enqueued == 2


def test_one_middleware_per_registry() -> None:
    registry = CollectorRegistry()
    PrometheusMiddleware(registry)
    with pytest.raises(ConfigurationError, match="one PrometheusMiddleware per registry"):
        PrometheusMiddleware(registry)
    PrometheusMiddleware(registry, namespace="other")  # another namespace is fine


def test_a_failed_registration_leaves_nothing_behind() -> None:
    registry = CollectorRegistry()
    Counter("jobs_in_progress", "taken", namespace="conveyor", registry=registry)
    with pytest.raises(ConfigurationError):
        PrometheusMiddleware(registry)
    assert registry.get_sample_value("conveyor_jobs_total", {}) is None
    names = {m.name for m in registry.collect()}
    assert names == {"conveyor_jobs_in_progress"}  # only the collector that was there


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(ConfigurationError, match=r"pip install 'conveyor\[prometheus\]'"):
        PrometheusMiddleware()


def test_the_broker_gauges_are_read_at_each_scrape() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task(queue="images")
    def resize(i: int) -> None: ...

    register_queue_metrics(app, registry)
    register_queue_metrics(app, registry)  # once per registry, whoever asks
    assert sample(registry, "conveyor_broker_up") == 1
    assert sample(registry, "conveyor_workers") == 0
    resize.delay(0)
    clock.advance(30)
    resize.delay(1)
    resize.delay(2)
    resize.options(delay=3600).delay(9)
    clock.advance(15)

    def jobs(status: str) -> float:
        return sample(registry, "conveyor_queue_jobs", queue="images", status=status)

    assert (jobs("queued"), jobs("scheduled"), jobs("running")) == (3, 1, 0)
    assert sample(registry, "conveyor_queue_oldest_age_seconds", queue="images") == 45
    app.broker.heartbeat(WorkerInfo("w1", "host", 1, ["images"], 4, "threads", 0.0), ttl=60)
    app.broker.heartbeat(WorkerInfo("w2", "host", 2, ["images"], 4, "threads", 0.0), ttl=5)
    assert sample(registry, "conveyor_workers") == 2
    clock.advance(10)  # w2's heartbeat expires: it is not live any more
    assert sample(registry, "conveyor_workers") == 1
    drain(app, advance=False)
    assert jobs("queued") == 0 and jobs("scheduled") == 1
    assert sample(registry, "conveyor_queue_oldest_age_seconds", queue="images") == 0


def test_the_oldest_age_is_that_of_the_job_next_in_line() -> None:
    """A queue's jobs are handed out highest priority first: the job next in line is the
    queue's oldest when its jobs share a priority, else the oldest of the highest one."""
    registry = CollectorRegistry()
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task
    def report() -> None: ...

    register_queue_metrics(app, registry)
    report.options(priority=1).delay()
    clock.advance(20)
    report.options(priority=5).delay()
    clock.advance(5)
    report.options(priority=5).delay()
    clock.advance(1)
    assert sample(registry, "conveyor_queue_oldest_age_seconds", queue="default") == 6


def test_a_broker_that_fails_a_scrape_is_reported_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    app = Conveyor("memory://")

    @app.task(queue="images")
    def resize(i: int) -> None: ...

    resize.delay(1)
    register_queue_metrics(app, registry)
    stats = app.broker.stats

    def away() -> list[object]:
        raise BrokerUnavailable("cannot reach the broker")

    app.broker.stats = away  # type: ignore[method-assign,assignment]
    caplog.set_level(logging.INFO, "conveyor.prometheus")
    for _ in range(3):  # every scrape answers, with no stale numbers
        assert sample(registry, "conveyor_broker_up") == 0
        names = {s.name for family in registry.collect() for s in family.samples}
        assert names == {"conveyor_broker_up"}
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [
        "cannot read the broker for /metrics (broker_up 0): "
        "BrokerUnavailable: cannot reach the broker"
    ]
    app.broker.stats = stats  # type: ignore[method-assign]
    assert sample(registry, "conveyor_broker_up") == 1
    assert sample(registry, "conveyor_queue_jobs", queue="images", status="queued") == 1
    assert caplog.records[-1].getMessage() == "the broker answers again (broker_up 1)"


def test_first_runs_record_how_long_they_waited() -> None:
    registry = CollectorRegistry()
    app = Conveyor("memory://", middleware=[PrometheusMiddleware(registry)])

    @app.task(retries=1, backoff=0.001)
    def flaky() -> None:
        if current_job().attempt == 0:
            raise ValueError("again")

    flaky.delay()
    drain(app)
    assert (
        sample(registry, "conveyor_job_wait_seconds_count", queue="default") == 1
    )  # not the retry
    assert 0 <= sample(registry, "conveyor_job_wait_seconds_sum", queue="default") < 30


def test_the_dashboard_and_the_alerts_use_only_metrics_and_labels_that_exist() -> None:
    import json
    import pathlib
    import re

    registry = CollectorRegistry()
    app = Conveyor("memory://", middleware=[PrometheusMiddleware(registry)])
    register_queue_metrics(app, registry)

    @app.task
    def ok() -> None: ...

    ok.delay()
    drain(app)
    labels: dict[str, set[str]] = {}  # each sample's name and label names
    for family in registry.collect():
        for s in family.samples:
            labels.setdefault(s.name, set()).update(s.labels)
    exported = set(labels)
    docs = pathlib.Path(__file__).resolve().parents[2] / "docs"
    dashboard = json.loads((docs / "grafana" / "conveyor.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [dashboard["templating"]["list"][1]["definition"]]
    blocks = (docs / "observability.md").read_text().split("```yaml\n")[1:]
    alerts = "\n".join(block.split("```")[0] for block in blocks)  # and scrape configs
    text = "\n".join([*exprs, alerts])
    used = set(re.findall(r"conveyor_[a-z_]+", text))
    assert used and used <= exported, used - exported
    selectors = re.findall(r"(conveyor_[a-z_]+)\{([^}]*)\}", text)
    assert selectors
    for name, selector in selectors:
        named = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector))
        assert named <= labels[name], (name, named - labels[name])
