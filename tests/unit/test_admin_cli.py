"""``conveyor info | jobs | requeue | purge`` on a SQLite file, through the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor import Conveyor, JobStatus
from conveyor._message import Outcome
from conveyor.brokers import Finish
from conveyor.cli import cli


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


def _run(url: str, *args: str) -> str:
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(cli, [*args, "--url", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _app(url: str) -> tuple[Conveyor, object]:
    app = Conveyor(url)

    @app.task(name="demo:resize", queue="images")
    def resize(path: str) -> str:
        return path

    return app, resize


def test_info_shows_depths_and_running_progress(url: str) -> None:
    app, resize = _app(url)
    for i in range(3):
        resize.delay(f"{i}.png")  # type: ignore[attr-defined]
    delivery = app.broker.fetch(["images"], "w1", 1, 30, 0)[0]
    app.broker.progress(delivery, 0.4, "resizing")
    out = _run(url, "info")
    assert "images" in out and "│      2 │" in out  # two still queued
    assert "Running jobs" in out and "40%" in out and "resizing" in out
    assert "demo:resize" in out


def test_jobs_dead_then_requeue(url: str) -> None:
    app, resize = _app(url)
    job = resize.delay("x.png")  # type: ignore[attr-defined]
    delivery = app.broker.fetch(["images"], "w1", 1, 30, 0)[0]
    result = app.codec.encode_outcome(Outcome(reason="poison"))
    reason = "poison: crashed 5 times"
    app.broker.finish([Finish(delivery, JobStatus.DEAD, result, reason=reason)])
    out = _run(url, "jobs", "dead")
    assert job.id in out and "poison: crashed 5 times" in out
    assert "requeued 1 dead job(s)" in _run(url, "requeue", job.id)
    assert job.status is JobStatus.QUEUED
    assert "no dead jobs" in _run(url, "jobs", "dead")


def test_purge_removes_waiting_jobs(url: str) -> None:
    app, resize = _app(url)
    for i in range(4):
        resize.delay(f"{i}.png")  # type: ignore[attr-defined]
    assert "purged 4 job(s) from images" in _run(url, "purge", "images", "--yes")
    assert sum(s.queued for s in app.broker.stats()) == 0


def test_bad_input_is_a_clear_error(url: str) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["purge", "no*such", "--yes", "--url", url])
    assert bad.exit_code != 0
    assert "bad queue name" in str(bad.exception)
    both = runner.invoke(cli, ["requeue", "--all", "abc", "--url", url])
    assert both.exit_code == 2 and "not both" in both.output
