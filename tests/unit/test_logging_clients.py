"""The broker clients' own lines about a lost connection (aiormq's traceback, aio-pika's
"Reconnecting after 1 seconds" each second, psycopg's pool's warnings) under the logging the
``conveyor`` commands set up: kept to ``--log-level debug``, Conveyor's own lines shown.
No sockets: records logged by hand."""

from __future__ import annotations

import logging

import pytest

from conveyor import _logging as logs
from conveyor.cli import _logs

CHURN = ("aiormq.connection", "aio_pika.robust_connection", "aio_pika.tools", "psycopg.pool")


def _lost_connection_lines() -> None:
    """What the clients log when a connection is cut, as they log it."""
    try:
        raise ConnectionResetError("Server connection unexpectedly closed")
    except ConnectionResetError:
        logging.getLogger("aiormq.connection").warning(
            "Cancelling cause reader exited abnormally", exc_info=True
        )
    logging.getLogger("aiormq.connection").error("error when creating transport: %r", "111")
    logging.getLogger("aio_pika.robust_connection").warning(
        "Connection attempt failed. Reconnecting after 1 seconds."
    )
    logging.getLogger("aio_pika.tools").error("Callback error: RuntimeError: closed")
    logging.getLogger("psycopg.pool").warning("error connecting in 'conveyor': refused")
    logging.getLogger("conveyor").warning("lost the connection to RabbitMQ (reason)")


@pytest.mark.parametrize("level", ["info", "warning", "error"])
def test_the_worker_setup_keeps_the_clients_tracebacks_and_churn_off_stderr(
    capsys: pytest.CaptureFixture[str], level: str
) -> None:
    logs.configure(level, "text")
    _lost_connection_lines()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Reconnecting" not in err and "transport" not in err
    assert "psycopg" not in err and "Callback" not in err
    if level != "error":
        assert "WARNING conveyor: lost the connection to RabbitMQ (reason)" in err
    for name in CHURN:
        assert not logging.getLogger(name).isEnabledFor(logging.ERROR)
        assert logging.getLogger(name).isEnabledFor(logging.CRITICAL)


def test_debug_shows_the_clients_lines_again(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "text")
    logs.configure("debug", "text")  # a second setup at debug undoes the first's
    _lost_connection_lines()
    err = capsys.readouterr().err
    assert "WARNING aiormq.connection: Cancelling cause reader exited abnormally" in err
    assert "Traceback" in err and "Reconnecting after 1 seconds" in err
    assert "WARNING psycopg.pool: error connecting" in err


def test_the_other_commands_quiet_the_clients_without_setting_up_logging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``conveyor events`` and the like log through Python's last resort (warnings and
    errors): the clients' go only at CRITICAL, Conveyor's own warnings still go."""
    for name in ("CONVEYOR_LOG_LEVEL", "CONVEYOR_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    handlers = list(logging.getLogger().handlers)
    _logs.setup_from_env(verbose=False)
    assert logging.getLogger().handlers == handlers  # no handler of Conveyor's
    for name in CHURN:
        assert not logging.getLogger(name).isEnabledFor(logging.ERROR)
    assert logging.getLogger("conveyor.rabbitmq").isEnabledFor(logging.WARNING)
    _logs.setup_from_env(verbose=True)  # -v: debug, the clients' lines too
    assert logging.getLogger("aiormq.connection").isEnabledFor(logging.WARNING)


def test_a_level_the_application_gave_a_client_logger_stays(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Regression: the setup set these loggers whatever the application had (Django's
    # LOGGING, applied before the worker command's setup), and hid its own pool warnings.
    pool = logging.getLogger("psycopg.pool")
    logs.configure("info", "text")  # quieted by a setup before (another command, a test)
    pool.setLevel(logging.WARNING)  # then the application's own choice
    try:
        logs.configure("info", "text")
        assert pool.level == logging.WARNING
        logs.configure("debug", "text")
        assert pool.level == logging.WARNING
        pool.warning("error connecting in 'pool-1': refused")
        assert "WARNING psycopg.pool: error connecting in 'pool-1'" in capsys.readouterr().err
    finally:
        pool.setLevel(logging.NOTSET)
