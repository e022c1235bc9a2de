"""``conveyor.contrib.prometheus``: what the metrics count, in-process on memory:// (the
``/metrics`` endpoint of a real worker is in tests/integration/test_observability.py)."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import CollectorRegistry, Counter

from conveyor import ConfigurationError, Conveyor, current_job
from conveyor._clock import FakeClock
from conveyor._message import Envelope
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


def test_queue_depth_is_read_from_the_broker_at_each_scrape() -> None:
    registry = CollectorRegistry()
    app = Conveyor("memory://")

    @app.task(queue="images")
    def resize(i: int) -> None: ...

    register_queue_metrics(app, registry)
    register_queue_metrics(app, registry)  # once per registry, whoever asks
    assert sample(registry, "conveyor_broker_up") == 1
    for i in range(3):
        resize.delay(i)
    resize.options(delay=3600).delay(9)
    assert sample(registry, "conveyor_queue_jobs", queue="images", state="queued") == 3
    assert sample(registry, "conveyor_queue_jobs", queue="images", state="scheduled") == 1
    drain(app, advance=False)
    assert sample(registry, "conveyor_queue_jobs", queue="images", state="queued") == 0

    def away() -> list[object]:
        raise ConnectionError("broker away")

    app.broker.stats = away  # type: ignore[method-assign,assignment]
    assert sample(registry, "conveyor_broker_up") == 0
    assert (
        registry.get_sample_value("conveyor_queue_jobs", {"queue": "images", "state": "queued"})
        is None
    )


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


def test_the_dashboard_and_the_documented_alerts_use_only_metrics_that_exist() -> None:
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
    exported = {s.name for family in registry.collect() for s in family.samples}
    docs = pathlib.Path(__file__).resolve().parents[2] / "docs"
    dashboard = json.loads((docs / "grafana" / "conveyor.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [dashboard["templating"]["list"][1]["definition"]]
    alerts = (docs / "observability.md").read_text().split("```yaml\n")[1].split("```")[0]
    used = set(re.findall(r"conveyor_[a-z_]+", "\n".join([*exprs, alerts])))
    assert used and used <= exported, used - exported
