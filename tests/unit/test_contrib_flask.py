"""``conveyor.contrib.flask``: the extension's configuration, tasks run inside the Flask app
context (drained here), and ``flask conveyor worker`` handing its options to a Worker. Real
worker processes (threads, and processes whose children load the app) run the Flask
example's tests, in tests/integration/test_examples.py."""

from __future__ import annotations

import asyncio
import importlib
import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask, current_app, g
from flask.cli import FlaskGroup
from flask.cli import cli as flask_cli

from conveyor import ConfigurationError, InvalidURL, TaskFailed
from conveyor.contrib.flask import FlaskConveyor, flask_command
from conveyor.testing import drain
from conveyor.worker import Worker


def make_app(**config: Any) -> Flask:
    app = Flask("shop")
    app.config.update({"SHOP_NAME": "Conveyor Coffee", "CONVEYOR_URL": "memory://", **config})
    return app


@pytest.fixture
def conveyor() -> Iterator[FlaskConveyor]:
    with FlaskConveyor(url="memory://") as ext:
        yield ext


def test_init_app_registers_the_extension_and_takes_the_url_from_the_config(
    conveyor: FlaskConveyor, tmp_path: Path
) -> None:
    app = make_app(CONVEYOR_URL=f"sqlite:///{tmp_path}/jobs.db")
    conveyor.init_app(app)
    assert app.extensions["conveyor"] is conveyor
    assert conveyor.url == f"sqlite:///{tmp_path}/jobs.db"
    assert conveyor.flask_app is app
    assert "conveyor" in app.cli.commands


def test_without_the_config_key_the_url_given_stays() -> None:
    app = Flask("shop")
    with FlaskConveyor(app, url="memory://") as ext:
        assert ext.url == "memory://"
        assert ext.flask_app is app


def test_an_app_whose_config_names_no_broker_gets_the_url_given_not_the_last_apps(
    tmp_path: Path,
) -> None:
    """An app factory that makes apps configured each their own way (as tests do)."""
    store = "redis://127.0.0.1:1/0"
    with FlaskConveyor(url="amqp://guest:guest@127.0.0.1:1/v", store=store) as ext:
        ext.init_app(make_app(CONVEYOR_URL=f"sqlite:///{tmp_path}/a.db"))
        assert ext.url == f"sqlite:///{tmp_path}/a.db" and ext.store_url is None
        ext.init_app(Flask("plain"))  # no CONVEYOR_URL: the extension's own
        assert ext.url == "amqp://guest:guest@127.0.0.1:1/v" and ext.store_url == store
        other = "redis://127.0.0.1:2/0"
        ext.init_app(make_app(CONVEYOR_URL=ext.url, CONVEYOR_STORE_URL=other))
        assert ext.store_url == other
        ext.init_app(Flask("plain3"))  # the store of the last app does not stay either
        assert ext.store_url == store


def test_a_bad_url_in_the_config_names_the_key(conveyor: FlaskConveyor) -> None:
    with pytest.raises(InvalidURL, match=r"app.config\['CONVEYOR_URL'\]: bad broker URL"):
        conveyor.init_app(make_app(CONVEYOR_URL="localhost:6379"))


def test_the_url_cannot_change_under_an_open_broker(tmp_path: Path) -> None:
    with FlaskConveyor(url="memory://") as ext:
        ext.open()
        app = make_app(CONVEYOR_URL=f"sqlite:///{tmp_path}/jobs.db")
        with pytest.raises(ConfigurationError, match="already open on memory://"):
            ext.init_app(app)
        ext.close()
        ext.init_app(app)  # closed: the next open uses the new URL
        assert ext.url.startswith("sqlite:///")


def test_the_flask_app_is_the_first_argument() -> None:
    with pytest.raises(ConfigurationError, match="FlaskConveyor takes the Flask app first"):
        FlaskConveyor("redis://localhost:6379/0")  # type: ignore[arg-type]


def test_tasks_run_inside_the_app_context(conveyor: FlaskConveyor) -> None:
    seen: list[tuple[str, bool]] = []

    @conveyor.task
    def greet(name: str) -> str:
        seen.append((current_app.name, "counter" in g))
        g.counter = 1  # a fresh g per run: the next run does not see it
        return f"{current_app.config['SHOP_NAME']} greets {name}"

    conveyor.init_app(make_app())
    jobs = [greet.delay("ada"), greet.delay("alan")]
    drain(conveyor)
    assert [j.result() for j in jobs] == [
        "Conveyor Coffee greets ada",
        "Conveyor Coffee greets alan",
    ]
    assert seen == [("shop", False), ("shop", False)]


def test_async_tasks_run_inside_the_app_context(conveyor: FlaskConveyor) -> None:
    @conveyor.task
    async def shop_name() -> str:
        await asyncio.sleep(0)
        return str(current_app.config["SHOP_NAME"])

    conveyor.init_app(make_app())
    job = shop_name.delay()
    drain(conveyor)
    assert job.result() == "Conveyor Coffee"


def test_teardown_gets_the_tasks_error_and_the_job_fails_as_it_would(
    conveyor: FlaskConveyor,
) -> None:
    app = make_app()
    torn_down: list[BaseException | None] = []
    app.teardown_appcontext(torn_down.append)

    @conveyor.task
    def refund(order: int) -> None:
        raise ValueError(f"order {order} was never paid")

    @conveyor.task
    def ship(order: int) -> int:
        return order

    conveyor.init_app(app)
    failed, shipped = refund.delay(7), ship.delay(8)
    drain(conveyor)
    with pytest.raises(TaskFailed, match="order 7 was never paid"):
        failed.result()
    assert shipped.result() == 8
    errors = sorted(torn_down, key=lambda e: e is None)
    assert isinstance(errors[0], ValueError) and errors[1] is None


def test_the_last_init_app_is_the_app_tasks_run_in(conveyor: FlaskConveyor) -> None:
    @conveyor.task
    def shop() -> str:
        return str(current_app.config["SHOP_NAME"])

    conveyor.init_app(make_app())
    conveyor.init_app(make_app(SHOP_NAME="Second Shop"))
    job = shop.delay()
    drain(conveyor)
    assert job.result() == "Second Shop"


def test_a_view_enqueues_and_the_drained_job_sees_the_config(conveyor: FlaskConveyor) -> None:
    @conveyor.task
    def receipt(order: int) -> str:
        return f"{current_app.config['SHOP_NAME']}: receipt for order {order}"

    app = make_app()
    conveyor.init_app(app)

    @app.post("/orders/<int:order>")
    def order(order: int) -> dict[str, str]:
        return {"job": receipt.delay(order).id}

    job_id = app.test_client().post("/orders/42").get_json()["job"]
    drain(conveyor)
    assert conveyor.job(job_id).result() == "Conveyor Coffee: receipt for order 42"


def test_a_worker_without_a_flask_app_says_how_to_give_it_one(
    conveyor: FlaskConveyor, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLASK_APP", raising=False)

    @conveyor.task
    def plain() -> str:
        return "no context needed"

    job = plain.delay()
    with caplog.at_level(logging.WARNING, logger="conveyor.contrib.flask"):
        drain(conveyor)
    assert job.result() == "no context needed"
    assert "flask --app APP conveyor worker" in caplog.text


def test_a_worker_without_a_flask_app_loads_the_one_flask_app_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_package: Callable[[str], str]
) -> None:
    name = write_package("loaded_shop")
    monkeypatch.setenv("FLASK_APP", f"{name}:create_app")
    monkeypatch.setenv("CONVEYOR_URL", "memory://")  # the URL its config gives: no conflict
    tasks = importlib.import_module(f"{name}.tasks")
    ext: FlaskConveyor = tasks.conveyor
    assert ext.flask_app is None  # importing the tasks made no Flask app
    job = tasks.shop_name.delay()
    drain(ext)
    assert job.result() == "Conveyor Coffee"
    assert ext.flask_app is not None


# -- flask conveyor worker -------------------------------------------------------------------

SHOP = {
    "__init__.py": """
        from flask import Flask

        def create_app() -> Flask:
            from .tasks import conveyor
            app = Flask(__name__)
            app.config.update(SHOP_NAME="Conveyor Coffee", CONVEYOR_URL="memory://")
            conveyor.init_app(app)
            return app
    """,
    "tasks.py": """
        from flask import current_app
        from conveyor.contrib.flask import FlaskConveyor, flask_command

        conveyor = FlaskConveyor(trust=["billing"])

        @conveyor.task
        def shop_name() -> str:
            return current_app.config["SHOP_NAME"]
    """,
}


@pytest.fixture
def write_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """``write_package(name)`` writes the SHOP package as ``name`` on ``sys.path``."""

    def write(name: str) -> str:
        (tmp_path / name).mkdir()
        for file, source in SHOP.items():
            (tmp_path / name / file).write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        return name

    return write


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Worker]:
    monkeypatch.delenv("FLASK_APP", raising=False)  # restored: the command sets it
    seen: list[Worker] = []

    def run(self: Worker) -> None:
        seen.append(self)

    monkeypatch.setattr(Worker, "run", run)
    return seen


def test_flask_conveyor_worker_runs_a_worker_with_the_options_of_conveyor_worker(
    captured: list[Worker], write_package: Callable[[str], str]
) -> None:
    name = write_package("cli_shop")
    args = ["--app", name, "conveyor", "worker", "-q", "default,mail", "-c", "3", "--lease", "9"]
    result = CliRunner().invoke(flask_cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (w,) = captured
    assert (w.queues, w.concurrency, w.lease) == (["default", "mail"], 3, 9.0)
    assert w.module == f"{name}.tasks:conveyor"  # what a process-pool child imports
    assert w.trusted == frozenset({name, "billing"})
    assert w.app.url == "memory://"


def test_flask_conveyor_worker_refuses_an_app_without_the_extension(
    captured: list[Worker],
) -> None:
    group = FlaskGroup(create_app=lambda: Flask("bare"))
    group.add_command(flask_command)
    result = CliRunner().invoke(group, ["conveyor", "worker"])
    assert result.exit_code == 2
    assert "this Flask app has no FlaskConveyor" in result.output
    assert captured == []


def test_a_process_pool_needs_an_app_its_children_can_load(
    captured: list[Worker], write_package: Callable[[str], str]
) -> None:
    name = write_package("factory_shop")
    group = FlaskGroup(create_app=importlib.import_module(name).create_app)
    result = CliRunner().invoke(group, ["conveyor", "worker", "--pool", "processes"])
    assert result.exit_code == 2
    assert "set FLASK_APP" in result.output
    assert captured == []
