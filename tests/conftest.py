"""Fixtures for every test directory.

The private ``redis-server`` fixtures (``redis_server``, ``fresh_redis_server``,
``aof_redis_server``) live in ``tests/redis_server.py``, and the Django project's
(``django_project``, ``django_worker``) in ``tests/django_setup.py``, loaded here as plugins. This
folder is not a package: pytest puts it on ``sys.path`` when it imports this file, which is
how ``redis_server`` is found (and how test modules import its helpers).

Hypothesis runs under the ``conveyor`` profile: no per-example deadline and no "too slow"
health check, two wall-clock judgements a machine loaded by parallel tests (``make test``
runs them on several workers) could fail; what the properties check is untouched. Tests
that set their own ``settings`` start from this profile.
"""

import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# The worker imports its processes pool on first use, from the thread that starts the
# worker. Under pytest that import is rewritten (conveyor ships a pytest plugin, so pytest
# rewrites the whole package), and CPython 3.11's ast.parse can fail in such a thread with
# "SystemError: AST constructor recursion depth mismatch" after the deep-recursion tests:
# imported here once, in the main thread, it is never parsed in a worker's thread.
import conveyor.worker._processes  # noqa: F401
from conveyor import _logging as conveyor_logging

pytest_plugins = [
    "redis_server",
    "redis_cluster",
    "django_setup",
    "postgres_server",
    "rabbitmq_server",
]

settings.register_profile("conveyor", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("conveyor")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands run in process (``conveyor``'s, ``flask conveyor``, ``manage.py
    conveyor_worker``) set up logging for the whole process, as they should: put the root
    handlers, every logger's level and the setup of ``conveyor._logging`` back after each
    test, so no test sees another's handlers."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = logging.Logger.manager.loggerDict
    levels = {n: lg.level for n, lg in loggers.items() if isinstance(lg, logging.Logger)}
    setup = conveyor_logging._setup.level, set(conveyor_logging._setup.packages)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, logger in list(loggers.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))
        conveyor_logging._setup.level, conveyor_logging._setup.packages = setup
        logging.captureWarnings(False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Captured output and logs with a lone surrogate (the hostile tasks' exceptions carry
    some, and the worker logs them) escaped: a pytest-xdist worker cannot send such text to
    the main process, and the whole run would stop."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    report.sections = [(title, _sendable(text)) for title, text in report.sections]


def _sendable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
