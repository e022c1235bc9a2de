"""pytest fixtures for testing a Conveyor application; pytest loads this module by itself
(the ``pytest11`` entry point) wherever Conveyor is installed.

* ``conveyor_clock``: a ``FakeClock``; time moves only when the test (or ``drain``) moves it.
* ``conveyor_app``: an app on a fresh ``memory://`` broker and ``conveyor_clock``. With
  ``conveyor_app = "myapp.tasks:app"`` in the pytest configuration it is *your* app,
  pointed at the fresh broker and clock for the test (``use_memory``) and given back after.
* ``conveyor_worker``: a real ``Worker`` on ``conveyor_app`` running in a thread (with the
  periodic scheduler), stopped at teardown; wait for results with a timeout.

Loading it costs a test run that uses none of them nothing beyond ``import conveyor``:
everything else is imported inside the fixtures. Turn it off with ``-p no:conveyor``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conveyor import Conveyor
    from conveyor.testing import FakeClock
    from conveyor.worker import Worker

WORKER_STOP_TIMEOUT = 10.0  # how long teardown waits for conveyor_worker's thread


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "conveyor_app",
        "module:attribute of the Conveyor app that the conveyor_app fixture points at a "
        "fresh memory:// broker for each test (default: a new app)",
        default="",
    )


@pytest.fixture
def conveyor_clock() -> FakeClock:
    """A ``FakeClock`` at a fixed instant; ``conveyor_app`` runs on it."""
    from conveyor.testing import FakeClock

    return FakeClock()


@pytest.fixture
def conveyor_app(request: pytest.FixtureRequest, conveyor_clock: FakeClock) -> Iterator[Conveyor]:
    """A ``Conveyor`` on a fresh ``memory://`` broker and ``conveyor_clock``: a new one, or
    the app named by the ``conveyor_app`` setting, for the duration of the test."""
    from conveyor import Conveyor
    from conveyor.testing import use_memory

    spec = str(request.config.getini("conveyor_app") or "").strip()
    if not spec:
        with Conveyor("memory://", clock=conveyor_clock) as app:
            yield app
        return
    with use_memory(load_app(spec), conveyor_clock) as app:
        yield app


@pytest.fixture
def conveyor_worker(conveyor_app: Conveyor) -> Iterator[Worker]:
    """A ``Worker`` running on ``conveyor_app`` in a thread: every queue the app's tasks
    use (those registered when it starts: a task the test defines later on a queue of its
    own is not served), 4 threads, and the app's periodic schedules. Stopped at teardown (a
    job still running is interrupted); an error that stopped it fails the test."""
    from conveyor.testing._drain import task_queues, worker_for_tests

    queues = task_queues(conveyor_app)
    worker = worker_for_tests(conveyor_app, queues, concurrency=4, grace=1.0, trust=())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="conveyor_worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(graceful=False)
        thread.join(WORKER_STOP_TIMEOUT)
    if thread.is_alive():
        pytest.fail(f"conveyor_worker did not stop within {WORKER_STOP_TIMEOUT:g} s")
    if errors:
        raise errors[0]


def load_app(spec: str) -> Conveyor:
    """The app a ``module:attribute`` (or ``module``, whose ``app``) setting names."""
    from conveyor import ConfigurationError, Conveyor

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the pytest setting conveyor_app = {spec!r} names a module that cannot be "
            f"imported ({exc}); set it to 'package.module:attribute', importable from the "
            "tests (pythonpath = ... in the pytest configuration)"
        ) from exc
    app = getattr(module, attr or "app", None)
    if not isinstance(app, Conveyor):
        raise ConfigurationError(
            f"the pytest setting conveyor_app = {spec!r}: {module_name}.{attr or 'app'} is "
            f"not a Conveyor application ({type(app).__name__}); name it as module:attribute"
        )
    return app
