"""``conveyor exporter`` as a user runs it, beside a real ``conveyor worker``, on SQLite and
on Redis: its ``/metrics``, scraped over loopback, follows the queue as jobs wait, run and
end, and the workers as they come and go; what it says when it cannot serve or read."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import CommandProcess, Project, wait_for
from conveyor import Conveyor, Signature
from redis_server import private_redis

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Exporter(CommandProcess):
    """One ``conveyor exporter --port 0`` subprocess, which says on stderr the URL it
    serves."""

    def __init__(self, root: Path, env: dict[str, str], *args: str) -> None:
        super().__init__(root, env, "exporter", "--port", "0", *args)
        started = lambda: " at http://" in self.stderr() or self.proc.poll() is not None  # noqa: E731
        wait_for(started, 30, self.stderr)
        assert self.proc.poll() is None, self.stderr()
        self.url = "http://" + self.stderr().split(" at http://", 1)[1].split()[0]

    def scrape(self) -> Metrics:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.scrape().get((name, frozenset(labels.items())))


def _send(app: Conveyor, task: str, *args: object) -> str:
    """Enqueue a task of jobs_app by name (this process does not import it)."""
    (job,) = app.enqueue_many([Signature(app, f"jobs_app:{task}", args, {}, app.defaults)])
    return job.id


@pytest.mark.timeout(120)
def test_one_exporter_follows_the_queue_and_the_workers(project: Project) -> None:
    app = project.app()
    sent = [_send(app, "double", i) for i in range(3)]  # before any worker: they wait
    exporter = Exporter(project.root, project.env(), "-A", "jobs_app")
    try:

        def queued() -> float | None:
            return exporter.value("conveyor_queue_jobs", queue="default", status="queued")

        assert queued() == 3
        assert exporter.value("conveyor_workers") == 0
        assert exporter.value("conveyor_broker_up") == 1
        assert exporter.value("conveyor_jobs_total") is None  # the workers' to serve
        wait_for(
            lambda: (
                (exporter.value("conveyor_queue_oldest_age_seconds", queue="default") or 0) >= 0.5
            ),
            10,
            exporter.stderr,
        )  # the first job waits, and the exporter sees it wait longer at each scrape
        worker = project.worker("-c", "2")
        assert [app.job(i).result(timeout=30) for i in sent] == [0, 2, 4]
        long = _send(app, "slow", "long", 1.5)
        wait_for(
            lambda: exporter.value("conveyor_queue_jobs", queue="default", status="running") == 1,
            20,
            worker.output,
        )
        assert exporter.value("conveyor_workers") == 1
        assert app.job(long).result(timeout=30) == "long"
        wait_for(lambda: queued() == 0, 10, exporter.stderr)
        assert exporter.value("conveyor_queue_oldest_age_seconds", queue="default") == 0
        assert exporter.value("conveyor_queue_jobs", queue="default", status="running") == 0
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        wait_for(lambda: exporter.value("conveyor_workers") == 0, 10, exporter.stderr)
        assert exporter.stop() == 0
    finally:
        exporter.kill()
        app.close()
    assert "Traceback" not in exporter.stderr(), exporter.stderr()


SHOP_APP = """
from conveyor import Conveyor
from conveyor.contrib.prometheus import PrometheusMiddleware

app = Conveyor(middleware=[PrometheusMiddleware(namespace="shop")])  # CONVEYOR_URL
"""


@pytest.mark.timeout(60)
def test_the_exporter_serves_the_names_the_app_s_workers_serve(tmp_path: Path) -> None:
    """``-A`` an app whose ``PrometheusMiddleware`` has ``namespace="shop"``: its workers
    serve ``shop_queue_jobs``, and so does the exporter (``max`` aggregates the two);
    ``--namespace`` says otherwise."""
    project = Project(tmp_path)
    (tmp_path / "shop_app.py").write_text(SHOP_APP)
    app = project.app()  # makes the database
    _send(app, "double", 1)
    try:
        for args, prefix in [((), "shop"), (("--namespace", "fleet"), "fleet")]:
            exporter = Exporter(tmp_path, project.env(), "-A", "shop_app", *args)
            try:
                metrics = exporter.scrape()
                labels = frozenset({"queue": "default", "status": "queued"}.items())
                assert metrics[(f"{prefix}_queue_jobs", labels)] == 1
                assert metrics[(f"{prefix}_broker_up", frozenset())] == 1
                assert not any(name.startswith("conveyor_") for name, _ in metrics)
                assert exporter.stop() == 0
            finally:
                exporter.kill()
            assert "Traceback" not in exporter.stderr(), exporter.stderr()
    finally:
        app.close()
        project.cleanup()


def test_serve_exporter_takes_a_namespace_and_else_the_app_s() -> None:
    from prometheus_client import CollectorRegistry

    from conveyor.contrib.prometheus import PrometheusMiddleware, serve_exporter

    middleware = PrometheusMiddleware(CollectorRegistry(), namespace="shop")
    shop = Conveyor("memory://", middleware=[middleware])
    plain = Conveyor("memory://")
    for app in (shop, plain):
        app.enqueue(print, "queued")
    for app, namespace, stem in [
        (plain, "shop", "shop_"),  # given
        (shop, None, "shop_"),  # the app's middleware's, as its workers serve them
        (shop, "fleet", "fleet_"),  # given wins
        (plain, None, "conveyor_"),
        (plain, "", ""),  # none: bare names, as prometheus_client makes them
    ]:
        server = serve_exporter(app, 0, namespace=namespace)
        try:
            with urllib.request.urlopen(server.url, timeout=10) as response:
                text = response.read().decode()
        finally:
            server.close()
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        gauges = {"queue_jobs", "queue_oldest_age_seconds", "workers", "broker_up"}
        assert {n for n in names if not n.startswith("process_")} == {stem + g for g in gauges}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("scheme", "name"),
    # PostgreSQL's broker is opened at start (Redis's on first use): one down then stopped
    # the exporter at start, exit 1, where the docs promise broker_up 0.
    [("redis", "Redis"), ("postgresql", "PostgreSQL")],
)
def test_an_unreachable_broker_is_served_as_down_without_its_password(
    tmp_path: Path, scheme: str, name: str
) -> None:
    url = f"{scheme}://user:hunter2@127.0.0.1:{_closed_port()}/0"
    exporter = Exporter(tmp_path, {**_env(), "CONVEYOR_URL": url})
    try:
        assert exporter.value("conveyor_broker_up") == 0
        assert exporter.value("conveyor_queue_jobs") is None
        assert exporter.stop() == 0
    finally:
        exporter.kill()
    err = exporter.stderr()
    assert f"serving metrics of {scheme}://" in err and "***@127.0.0.1" in err, err
    down = "WARNING conveyor.prometheus: cannot read the broker for /metrics (broker_up 0): "
    assert err.count(down + f"BrokerUnavailable: cannot reach {name}") == 1, err  # not per scrape
    assert "hunter2" not in err and "Traceback" not in err


@pytest.mark.redis
def test_a_refused_login_stops_it_at_start(tmp_path: Path) -> None:
    server = private_redis(tmp_path / "redis", password="s3cret")
    try:
        url = f"redis://:wrong-one@127.0.0.1:{server.port}/0"
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "exporter", "--port", "0", "--url", url],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.stop()
    assert done.returncode == 1, done.stderr
    assert "error: Redis refused the login" in done.stderr, done.stderr
    assert "wrong-one" not in done.stderr and "serving metrics" not in done.stderr


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--port", "70000"], 2, "70000 is not in the range 0<=x<=65535"),
        (["--port", "PORT"], 2, "'PORT' is not a valid integer"),
        (["--port", "{taken}"], 1, "cannot serve metrics on 127.0.0.1:{taken}"),
        (["--port", "0", "--url", "{sqlite}"], 1, "no SQLite database at"),
        (["--port", "0", "--url", "nowhere://x"], 1, "unknown broker scheme 'nowhere'"),
    ],
)
def test_what_it_cannot_do_it_says(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fill = {"taken": str(taken.getsockname()[1]), "sqlite": f"sqlite:///{tmp_path}/jobs.db"}
        url = f"redis://127.0.0.1:{_closed_port()}/0"
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "exporter", *(a.format(**fill) for a in args)],
            cwd=tmp_path,
            env={**_env(), "CONVEYOR_URL": url},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == code and says.format(**fill) in done.stderr, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no database made by mistake


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CONVEYOR_URL"}
