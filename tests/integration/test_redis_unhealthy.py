"""Redis servers that answer, but not as a broker needs: one that accepts connections and
never answers, a read-only replica, a database number past the server's ``databases``, and
one that wants a password the URL does not give (private servers and sockets of the tests'
own; never the shared Redis on 6379).

* A never-answering server fails a one-shot call within one socket timeout: a timeout is
  not sent again (before, redis-py's retry held each call for 4 socket timeouts).
* A replica is a warning of ``warnings()`` (``conveyor ping`` still exits 0: the broker
  answers) naming its master, and a write it refuses says to point the URL at the master.
* ``redis://host/99`` is a ``ConfigurationError``: the worker and ``conveyor events`` exit 1
  with it at once, instead of retrying for ever.
* The missing-password hint shows its ``PASSWORD`` placeholders, not ``***``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Project, conveyor
from conveyor import BrokerError, BrokerUnavailable, ConfigurationError, Conveyor
from redis_server import SERVER_BINARY, RedisServer, private_redis, unique_prefix

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(SERVER_BINARY is None, reason="no redis-server binary"),
]

OUT_OF_RANGE = (
    "database 99 in the URL is not below the server's `databases` setting: use a number "
    "below it (/0 to /15 with the default 16)"
)


def _calls(app: Conveyor) -> tuple[Callable[[], object], ...]:
    """A read, an enqueue and an asyncio enqueue through ``app``, each a call to make."""

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    async def enqueue() -> None:
        await add.delay_async(1, 2)

    return app.broker.stats, lambda: add.delay(1, 2), lambda: asyncio.run(enqueue())


# -- a server that never answers -----------------------------------------------------------


def test_a_server_that_never_answers_fails_a_call_within_one_socket_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        app = Conveyor(f"redis://127.0.0.1:{silent.getsockname()[1]}/0?socket_timeout=1")
        stats, _, enqueue_async = _calls(app)
        try:
            for call in (stats, enqueue_async):
                started = time.monotonic()
                with pytest.raises(BrokerUnavailable, match="Timeout"):
                    call()
                took = time.monotonic() - started
                assert took < 3, took  # one 1 s socket timeout, not 4 (the old retries)
        finally:
            app.close()


# -- a read-only replica -------------------------------------------------------------------


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and a (read-only) replica of it."""
    master = private_redis(tmp_path_factory.mktemp("master"))
    try:
        copy = private_redis(
            tmp_path_factory.mktemp("replica"),
            extra=("--replicaof", "127.0.0.1", str(master.port)),
        )
        try:
            yield master, copy
        finally:
            copy.stop()
    finally:
        master.stop()


def test_a_replica_is_named_with_its_master_and_a_refused_write_says_what_to_do(
    replica: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    master, copy = replica
    advice = (
        f"this Redis is a read-only replica of 127.0.0.1:{master.port}: point the URL at the "
        "master, or use redis+sentinel://"
    )
    app = Conveyor(copy.url, prefix=unique_prefix())

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    try:
        assert any(w.startswith(advice) for w in app.broker.warnings())
        with pytest.raises(BrokerError) as refused:
            add.delay(1, 2)
        assert str(refused.value).startswith(
            "this Redis is a read-only replica: point the URL at the master"
        )
    finally:
        app.close()
    project = Project(tmp_path, copy.url, unique_prefix())
    # the broker answers: exit 0, as for other warnings (docs/cli.md); the warning says why
    probe = json.loads(conveyor(project, "ping", "--json").stdout)
    assert probe["ok"] is True and any(w.startswith(advice) for w in probe["warnings"])
    assert f"warning: {advice}" in conveyor(project, "ping").stderr


# -- a database number past the server's `databases` ---------------------------------------


def test_a_database_past_databases_is_a_configuration_error(redis_server: RedisServer) -> None:
    app = Conveyor(f"redis://127.0.0.1:{redis_server.port}/99", prefix=unique_prefix())
    try:
        for call in _calls(app):
            with pytest.raises(ConfigurationError) as caught:
                call()
            assert str(caught.value) == OUT_OF_RANGE
    finally:
        app.close()


def test_the_worker_and_events_exit_1_at_once_on_a_database_past_databases(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    project = Project(tmp_path, f"redis://127.0.0.1:{redis_server.port}/99", unique_prefix())
    try:
        worker = project.worker(ready=False)
        started = time.monotonic()
        code = worker.wait(45)
        took = time.monotonic() - started
        assert code == 1, worker.output()
        assert f"error: {OUT_OF_RANGE}" in worker.output()
        assert took < 20, took  # it stopped, instead of retrying for ever
        try:
            events = subprocess.run(
                [sys.executable, "-m", "conveyor", "events"],
                cwd=project.root,
                env=project.env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"conveyor events still retrying: {exc.stderr!r}") from None
        assert events.returncode == 1, events.stderr
        assert f"error: {OUT_OF_RANGE}" in events.stderr
    finally:
        project.cleanup()


# -- a password the URL does not give ------------------------------------------------------


def test_the_missing_password_hint_shows_its_placeholders(tmp_path: Path) -> None:
    server = private_redis(tmp_path / "redis", password="real-secret-7")
    try:
        project = Project(tmp_path, server.url, unique_prefix())
        shown = conveyor(project, "info", code=1).stderr
        assert (
            "write redis://:PASSWORD@host:6379/0 (requirepass) or "
            "redis://USER:PASSWORD@host:6379/0 (an ACL user)"
        ) in shown
        assert "***" not in shown
        wrong = f"redis://:real-secret-8@127.0.0.1:{server.port}/0"
        refused = conveyor(project, "info", "--url", wrong, code=1).stderr
        assert "Redis refused the login" in refused and "real-secret" not in refused
    finally:
        server.stop()
