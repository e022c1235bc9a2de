"""``conveyor.contrib.flask``: the extension's configuration, tasks run inside the Flask app
context (drained here), and ``flask conveyor worker`` handing its options to a Worker. Real
worker processes (threads, and processes whose children load the app) run the Flask
example's tests, in tests/integration/test_examples.py."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask, current_app, g
from flask.cli import FlaskGroup
from flask.cli import cli as flask_cli

from conveyor import ConfigurationError, InvalidURL, JobStatus, TaskFailed
from conveyor.cli import cli as conveyor_cli
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_package: Callable[..., str]
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
        import os
        from flask import Flask

        def create_app() -> Flask:
            from .tasks import conveyor
            app = Flask(__name__)
            url = os.environ.get("SHOP_CONVEYOR_URL", "memory://")
            app.config.update(SHOP_NAME="Conveyor Coffee", CONVEYOR_URL=url)
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


# An app that only enqueues plain functions, conveyor.enqueue(fn): no task registered.
PLAIN = {
    "__init__.py": """
        from flask import Flask
        from conveyor.contrib.flask import FlaskConveyor

        conveyor = FlaskConveyor()

        def create_app() -> Flask:
            app = Flask(__name__)
            app.config["CONVEYOR_URL"] = "memory://"
            conveyor.init_app(app)
            return app
    """,
    "jobs.py": """
        from flask import current_app

        def greet(name: str) -> str:
            return f"hello {name} from {current_app.name}"
    """,
}

# The extension made in the factory: no module holds it.
UNHELD = {
    "__init__.py": """
        from flask import Flask
        from conveyor.contrib.flask import FlaskConveyor

        def create_app() -> Flask:
            app = Flask(__name__)
            FlaskConveyor(app, url="memory://")
            return app
    """,
}


@pytest.fixture
def write_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``write_package(name, files=SHOP)`` writes a package as ``name`` on ``sys.path``."""

    def write(name: str, files: dict[str, str] = SHOP) -> str:
        (tmp_path / name).mkdir()
        for file, source in files.items():
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
    captured: list[Worker], write_package: Callable[..., str]
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
    captured: list[Worker], write_package: Callable[..., str]
) -> None:
    name = write_package("factory_shop")
    group = FlaskGroup(create_app=importlib.import_module(name).create_app)
    result = CliRunner().invoke(group, ["conveyor", "worker", "--pool", "processes"])
    assert result.exit_code == 2
    assert "set FLASK_APP" in result.output
    assert captured == []


# -- conveyor worker shop.tasks, FLASK_APP=shop ------------------------------------------------


@pytest.fixture
def web_app_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The broker the shop's config names, not the extension's default (./conveyor.db)."""
    monkeypatch.chdir(tmp_path)  # where ./conveyor.db would be made
    monkeypatch.delenv("CONVEYOR_URL", raising=False)
    url = f"sqlite:///{tmp_path}/web.db"
    monkeypatch.setenv("SHOP_CONVEYOR_URL", url)
    return url


def test_conveyor_worker_uses_the_broker_of_the_flask_app_flask_app_names(
    captured: list[Worker], write_package: Callable[..., str], web_app_url: str, tmp_path: Path
) -> None:
    name = write_package("env_shop")
    result = CliRunner(env={"FLASK_APP": name}).invoke(conveyor_cli, ["worker", f"{name}.tasks"])
    assert result.exit_code == 0, result.output
    (w,) = captured
    ext = w.app
    assert isinstance(ext, FlaskConveyor)
    try:
        assert ext.url == web_app_url and ext.broker.url == web_app_url
        assert ext.flask_app is not None and ext.flask_app.name == name
        assert not (tmp_path / "conveyor.db").exists()
        job = importlib.import_module(f"{name}.tasks").shop_name.delay()
        w.drain(timeout=30)
        assert job.result() == "Conveyor Coffee"  # run in the app context
    finally:
        ext.close()


def test_an_extension_of_its_own_sends_on_its_own_url_whatever_flask_app_says(
    write_package: Callable[..., str], web_app_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading FLASK_APP's app before the broker opens is the worker command's: a script or a
    # test with an extension of its own (a shell or .flaskenv that sets FLASK_APP) ran the
    # web app's factory at its first send, and was refused for not being its extension.
    name = write_package("other_shop")
    monkeypatch.setenv("FLASK_APP", f"{name}:create_app")
    mine = FlaskConveyor(url="memory://")
    add = mine.task(name="add")(lambda a, b: a + b)
    job = add.delay(1, 2)
    assert mine.broker.url == "memory://" and job.status is JobStatus.QUEUED
    assert f"{name}" not in sys.modules  # the web app was never imported
    mine.close()


def test_conveyor_worker_url_wins_over_the_flask_apps(
    captured: list[Worker], write_package: Callable[..., str], web_app_url: str, tmp_path: Path
) -> None:
    name = write_package("url_shop")
    other = f"sqlite:///{tmp_path}/other.db"
    args = ["worker", f"{name}.tasks", "--url", other]
    result = CliRunner(env={"FLASK_APP": name}).invoke(conveyor_cli, args)
    assert result.exit_code == 0, result.output
    (w,) = captured
    try:
        assert w.app.url == other and w.app.broker.url == other
        assert isinstance(w.app, FlaskConveyor) and w.app.flask_app is not None
    finally:
        w.app.close()


def test_conveyor_worker_refuses_a_flask_app_it_cannot_load(
    captured: list[Worker], write_package: Callable[..., str], web_app_url: str
) -> None:
    name = write_package("lost_shop")
    env = {"FLASK_APP": "no_such_shop_module"}
    result = CliRunner(env=env).invoke(conveyor_cli, ["worker", f"{name}.tasks"])
    assert isinstance(result.exception, ConfigurationError), result.output
    message = str(result.exception)
    assert "cannot load the one of FLASK_APP=no_such_shop_module" in message
    assert "flask --app APP conveyor worker" in message
    assert captured == []


# -- flask conveyor worker, plain functions only -------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_flask_conveyor_worker_runs_an_app_that_only_enqueues_plain_functions(
    captured: list[Worker], write_package: Callable[..., str], pool: str
) -> None:
    name = write_package(f"plain_{pool}", PLAIN)
    package = importlib.import_module(name)
    package.create_app()
    job = package.conveyor.enqueue(importlib.import_module(f"{name}.jobs").greet, "ada")
    args = ["--app", name, "conveyor", "worker", "--pool", pool]
    result = CliRunner().invoke(flask_cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (w,) = captured
    assert w.module == f"{name}:conveyor"  # what a process-pool child imports
    assert name in w.trusted
    if pool == "threads":
        w.drain(timeout=30)
        assert job.result() == f"hello ada from {name}"
    package.conveyor.close()


def test_an_extension_no_module_holds_runs_on_threads_but_not_on_processes(
    captured: list[Worker], write_package: Callable[..., str]
) -> None:
    name = write_package("unheld_shop", UNHELD)
    args = ["--app", name, "conveyor", "worker"]
    result = CliRunner().invoke(flask_cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (w,) = captured
    assert w.module == name and name in w.trusted
    result = CliRunner().invoke(flask_cli, [*args, "--pool", "processes"])
    assert result.exit_code == 2
    assert "found no module that holds this app's FlaskConveyor" in result.output
    assert len(captured) == 1
