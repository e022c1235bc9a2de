"""``conveyor worker``: options reach the Worker; the app module's package is trusted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor import InvalidOption
from conveyor.cli import cli
from conveyor.worker import Worker


@pytest.fixture
def captured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Worker]:
    (tmp_path / "shopapp").mkdir()
    (tmp_path / "shopapp" / "__init__.py").write_text("")
    (tmp_path / "shopapp" / "tasks.py").write_text(
        "from conveyor import Conveyor\napp = Conveyor('memory://', trust=['billing'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[Worker] = []

    def fake_run(self: Worker) -> None:
        seen.append(self)

    monkeypatch.setattr(Worker, "run", fake_run)
    return seen


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, ["worker", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_defaults(captured: list[Worker]) -> None:
    _invoke("shopapp.tasks")
    (w,) = captured
    assert (w.queues, w.concurrency, w.pool, w.lease, w.grace) == (
        ["default"], 8, "threads", 30.0, 25.0,
    )  # fmt: skip
    assert w.trusted == frozenset({"shopapp", "billing"})
    assert w.module == "shopapp.tasks"


def test_every_option(captured: list[Worker]) -> None:
    _invoke(
        "shopapp.tasks:app", "-q", "default,images", "-q", "slow", "-c", "3",
        "--pool", "async", "--lease", "12", "--grace", "5",
        "--trust", "reports,ledger", "--trust", "extra", "--max-deliveries", "2",
    )  # fmt: skip
    (w,) = captured
    assert w.queues == ["default", "images", "slow"]
    assert (w.concurrency, w.pool, w.lease, w.grace) == (3, "async", 12.0, 5.0)
    assert w.trusted == frozenset({"shopapp", "billing", "reports", "ledger", "extra"})
    assert w.module == "shopapp.tasks:app"
    assert w._consumer.max_deliveries == 2


def test_bad_pool_is_a_usage_error(captured: list[Worker]) -> None:
    result = CliRunner().invoke(cli, ["worker", "shopapp.tasks", "--pool", "fibers"])
    assert result.exit_code == 2
    assert "fibers" in result.output


def test_app_option_and_url_override(
    captured: list[Worker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_URL", "memory://")  # restored after the test
    url = f"sqlite:///{tmp_path}/db/jobs.db"
    _invoke("-A", "shopapp.tasks", "--url", url)
    (w,) = captured
    assert w.app.url == url and w.module == "shopapp.tasks"
    assert (tmp_path / "db").is_dir()  # a worker may create the database and its folder
    assert w.trusted == frozenset({"shopapp", "billing"})
    assert os.environ["CONVEYOR_URL"] == url  # what pool children read
    w.app.close()


def test_two_different_apps_is_a_usage_error(captured: list[Worker]) -> None:
    result = CliRunner().invoke(cli, ["worker", "shopapp.tasks", "-A", "other.tasks"])
    assert result.exit_code == 2 and "give one" in result.output
    assert captured == []


@pytest.mark.parametrize("entry", [".", ".shopapp", "shop-app"])
def test_a_trust_that_names_no_package_is_refused(captured: list[Worker], entry: str) -> None:
    """``--trust .`` trusted the package "", that of every callable without a module."""
    result = CliRunner().invoke(cli, ["worker", "shopapp.tasks", "--trust", entry])
    assert isinstance(result.exception, InvalidOption), result.output
    assert "trust takes Python package names" in str(result.exception)
    assert f"{entry!r} is not one" in str(result.exception)
    assert captured == []  # no worker ran
