"""Metrics and traces from a real ``conveyor worker`` on SQLite, in the threads and the
processes pools: ``--metrics-port`` is scraped over loopback, and the spans the worker (or
its child processes) records are written to a file by a tiny exporter in the tasks module
and read back here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from conftest import Project, wait_for
from conveyor import Conveyor, Signature, TaskFailed
from conveyor.contrib.opentelemetry import OpenTelemetryMiddleware

pytestmark = pytest.mark.slow

TASKS = """
import json, os, time
from conveyor import Conveyor, current_job

app = Conveyor()  # CONVEYOR_URL, set by the test


@app.task
def ok(i: int) -> int:
    return i


@app.task
def fail() -> None:
    raise ValueError("nope")


@app.task
def flaky() -> int:
    if current_job().attempt == 0:
        raise ValueError("first attempt")
    return 1


@app.task
def slow() -> None:
    time.sleep(2)


SPANS = os.environ.get("OBS_SPANS")
if SPANS:  # this process's spans, one JSON line each
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from conveyor.contrib.opentelemetry import instrument

    class FileExporter(SpanExporter):
        def export(self, spans):
            with open(SPANS, "a") as f:
                for s in spans:
                    f.write(json.dumps({
                        "pid": os.getpid(),
                        "name": s.name,
                        "kind": s.kind.name,
                        "trace_id": s.context.trace_id,
                        "span_id": s.context.span_id,
                        "parent_id": s.parent.span_id if s.parent else None,
                        "status": s.status.status_code.name,
                        "attributes": dict(s.attributes),
                        "events": [e.name for e in s.events],
                    }) + "\\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    instrument(app, tracer_provider=provider)
"""


@pytest.fixture
def obs(tmp_path: Path) -> Iterator[Project]:
    project = Project(tmp_path)
    (tmp_path / "obs_tasks.py").write_text(textwrap.dedent(TASKS))
    yield project
    project.cleanup()  # the workers end with the test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def send(app: Conveyor, task: str, *args: Any, **options: Any) -> Any:
    """Enqueue an ``obs_tasks`` task by name (this process never imports the module); the
    producer's options are the job's."""
    sig = Signature(app, f"obs_tasks:{task}", args, {}, app.defaults.merge(**options))
    (job,) = app.enqueue_many([sig])
    return job


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_metrics_port_serves_the_counts_of_every_pool(obs: Project, pool: str) -> None:
    port = free_port()
    worker = obs.worker("--metrics-port", str(port), "--pool", pool, "-c", "2", module="obs_tasks")
    assert f"serving metrics at http://0.0.0.0:{port}/metrics" in worker.output()
    app = obs.app()
    oks = [send(app, "ok", i) for i in range(10)]
    fails = [send(app, "fail") for _ in range(2)]
    flaky = send(app, "flaky", retries=1, backoff=0.01)
    assert [j.result(timeout=60) for j in oks] == list(range(10))
    assert flaky.result(timeout=60) == 1
    for job in fails:
        with pytest.raises(TaskFailed):
            job.result(timeout=60)
    # Outcomes are counted before they are written: what the results show, /metrics shows.
    metrics = scrape(port)
    ok = {"task": "obs_tasks:ok", "queue": "default"}
    assert value(metrics, "conveyor_jobs_total", status="succeeded", **ok) == 10
    fail = {"task": "obs_tasks:fail", "queue": "default"}
    assert value(metrics, "conveyor_jobs_total", status="failed", **fail) == 2
    flaky_labels = {"task": "obs_tasks:flaky", "queue": "default"}
    assert value(metrics, "conveyor_jobs_total", status="retried", **flaky_labels) == 1
    assert value(metrics, "conveyor_jobs_total", status="succeeded", **flaky_labels) == 1
    assert value(metrics, "conveyor_job_duration_seconds_count", **ok) == 10
    assert value(metrics, "conveyor_job_duration_seconds_count", **flaky_labels) == 2
    assert value(metrics, "conveyor_jobs_in_progress", queue="default") == 0
    assert value(metrics, "conveyor_job_wait_seconds_count", queue="default") == 13
    assert value(metrics, "conveyor_broker_up") == 1  # and the broker's own counts:
    assert value(metrics, "conveyor_queue_jobs", queue="default", status="queued") == 0
    assert value(metrics, "conveyor_queue_jobs", queue="default", status="failed") == 2
    assert value(metrics, "conveyor_queue_oldest_age_seconds", queue="default") == 0
    assert value(metrics, "conveyor_workers") == 1  # the same gauges as conveyor exporter's
    assert any(name.startswith("process_") for name, _ in metrics)  # the default registry's
    app.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_trace_goes_from_the_producer_into_the_worker(
    obs: Project, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans_file = obs.root / "spans.jsonl"
    monkeypatch.setenv("OBS_SPANS", str(spans_file))
    obs.worker("--pool", pool, "-c", "2", module="obs_tasks")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = obs.app()
    app.add_middleware(OpenTelemetryMiddleware(provider))
    with provider.get_tracer("test").start_as_current_span("request") as request:
        ok = send(app, "ok", 7)
        failing = send(app, "fail")
    assert ok.result(timeout=60) == 7
    with pytest.raises(TaskFailed):
        failing.result(timeout=60)

    def spans() -> list[dict[str, Any]]:
        if not spans_file.exists():
            return []
        return [json.loads(line) for line in spans_file.read_text().splitlines()]

    wait_for(lambda: len(spans()) >= 2, 10, lambda: str(spans()))
    sends = [s for s in exporter.get_finished_spans() if s.name != "request"]
    sent = {s.attributes["messaging.message.id"]: s for s in sends}
    ran = {s["attributes"]["messaging.message.id"]: s for s in spans()}
    trace_id = request.get_span_context().trace_id
    for job in (ok, failing):
        producer, consumer = sent[job.id], ran[job.id]
        assert producer.name == "send default" and consumer["name"] == "process default"
        assert consumer["kind"] == "CONSUMER"
        assert consumer["trace_id"] == producer.context.trace_id == trace_id
        assert consumer["parent_id"] == producer.context.span_id
        assert consumer["attributes"]["messaging.system"] == "conveyor"
        assert consumer["attributes"]["messaging.operation.type"] == "process"
    assert ran[ok.id]["status"] == "UNSET"
    assert ran[failing.id]["status"] == "ERROR" and ran[failing.id]["events"] == ["exception"]
    worker_pid = obs.workers[0].pid
    pids = {s["pid"] for s in ran.values()}
    assert (worker_pid in pids) == (pool == "threads")  # processes: recorded in the child
    app.close()


@pytest.mark.timeout(120)
def test_a_child_killed_at_its_time_limit_leaves_one_run_span(
    obs: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--pool processes``, every process traced: a run the child ends records its span
    there; a child killed at the job's time limit never ends its span, and the worker
    records that run's span instead, once, as the child would have: ERROR, child of the
    send span."""
    spans_file = obs.root / "spans.jsonl"
    monkeypatch.setenv("OBS_SPANS", str(spans_file))
    obs.worker("--pool", "processes", "-c", "2", module="obs_tasks")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = obs.app()
    app.add_middleware(OpenTelemetryMiddleware(provider))
    slow = send(app, "slow", timeout=0.3)  # the producer's options are the job's
    failing, ok = send(app, "fail"), send(app, "ok", 1)
    for job in (slow, failing):
        with pytest.raises(TaskFailed):
            job.result(timeout=60)
    assert ok.result(timeout=60) == 1

    def runs() -> list[dict[str, Any]]:
        lines = spans_file.read_text().splitlines() if spans_file.exists() else []
        return [s for s in map(json.loads, lines) if s["name"] == "process default"]

    wait_for(lambda: len(runs()) >= 3, 10, lambda: str(runs()))
    sent = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}
    by_job = {job.id: [r for r in runs() if r["attributes"]["messaging.message.id"] == job.id]
              for job in (slow, failing, ok)}  # fmt: skip
    assert [len(found) for found in by_job.values()] == [1, 1, 1], by_job
    ((killed,), (failed,), (ran,)) = by_job.values()
    worker_pid = obs.workers[0].pid
    assert killed["pid"] == worker_pid  # recorded by the worker: the child was killed
    assert failed["pid"] != worker_pid and ran["pid"] != worker_pid  # by their children
    assert killed["status"] == failed["status"] == "ERROR" and ran["status"] == "UNSET"
    assert killed["events"] == ["exception"]
    for job, span in zip((slow, failing, ok), (killed, failed, ran), strict=True):
        assert span["parent_id"] == sent[job.id].context.span_id
        assert span["trace_id"] == sent[job.id].context.trace_id
    app.close()


DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def snippets() -> list[str]:
    text = DOCS.read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.timeout(120)
def test_the_snippets_of_the_docs_run(tmp_path: Path) -> None:
    """Every Python block of docs/observability.md runs as it is, and says what the text
    around it says it does."""
    expected = [
        ["WARNING myapp.jobs: job", "(__main__:nap) took", "ERROR myapp.jobs: job", "failed"],
        ["req-42"],
        ['conveyor_jobs_total{queue="default",status="succeeded",task="__main__:add"} 3.0'],
        [
            'conveyor_queue_jobs{queue="emails",status="queued"} 2.0',
            "conveyor_workers 0.0",
            "conveyor_broker_up 1.0",
        ],
        [
            '"name": "send default"',
            '"name": "process default"',
            '"name": "render email"',
            "sent to ada@example.com",
        ],
        ["reported: builtins.ValueError: card declined"],
        ["['job.enqueued', 'job.started', 'job.succeeded']", "0 more"],
    ]
    blocks = snippets()
    assert len(blocks) == len(expected)
    env = {k: v for k, v in os.environ.items() if k not in ("SENTRY_DSN", "CONVEYOR_URL")}
    for block, wanted in zip(blocks, expected, strict=True):
        script = tmp_path / "snippet.py"
        script.write_text(block)
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        for text in wanted:
            assert text in out, (text, out)
