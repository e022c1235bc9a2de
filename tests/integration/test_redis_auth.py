"""Redis credentials and ACL permissions, on private servers with ``requirepass``, ACL users
and sentinels (``tests/redis_server.py``; never the shared Redis on 6379).

A refused login (a wrong password, none given, a disabled or unknown ACL user) or a
permission the ACL user lacks (a command, a key, a command inside a script) is a
``BrokerAuthError`` that says what to check and never shows the password; it is raised at
once, not retried like an outage, and ``conveyor worker`` exits 1 with it. Every URL form
with a password works, a multi-sentinel one included, and nothing prints the password.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Project, WorkerProcess
from conveyor import BrokerAuthError, BrokerUnavailable, Conveyor, Job, Signature
from redis_server import (
    SERVER_BINARY,
    RedisSentinel,
    RedisServer,
    _free_port,
    private_redis,
    unique_prefix,
)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(SERVER_BINARY is None, reason="no redis-server binary"),
]

# The server's password holds every character a URL gives a meaning to.
PASSWORD = "p@ss:w/rd?#&=%+ é"
ENCODED = quote(PASSWORD, safe="")
# ACL users: name -> (password, rules)
USERS = {
    "app": ("app-secret-1", ("on", "~*", "+@all", "-@dangerous")),
    "off": ("off-secret-2", ("off", "~*", "+@all")),
    "narrow": ("narrow-secret-3", ("on", "~{elsewhere}:*", "+@all", "-@dangerous")),
    "noscript": ("noscript-secret-4", ("on", "~*", "+@all", "-@scripting")),
    "noxadd": ("noxadd-secret-5", ("on", "~*", "+@all", "-xadd")),
}
SECRETS = [PASSWORD, ENCODED, *(password for password, _ in USERS.values())]
REFUSED = "Redis refused the login"
NO_PASSWORD = "Redis needs a password and the broker URL gives none"
NOT_PERMITTED = "the Redis ACL user may not run a command or use a key Conveyor needs"


def _add_user(server: RedisServer, name: str, password: str, rules: tuple[str, ...]) -> None:
    server.client().execute_command("ACL", "SETUSER", name, "reset", f">{password}", *rules)


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server with ``requirepass`` and the ACL users of ``USERS``."""
    server = private_redis(tmp_path_factory.mktemp("locked"), password=PASSWORD)
    for name, (password, rules) in USERS.items():
        _add_user(server, name, password, rules)
    try:
        yield server
    finally:
        server.stop()


def _url(server: RedisServer, userinfo: str = "") -> str:
    return f"redis://{userinfo}{'@' if userinfo else ''}127.0.0.1:{server.port}/0"


def _user(server: RedisServer, name: str, password: str | None = None) -> str:
    return _url(server, f"{name}:{quote(password or USERS[name][0], safe='')}")


def _shows_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, (secret, text)


def _connections(server: RedisServer) -> int:
    """Connections the server has accepted so far (INFO stats); this look adds one."""
    client = server.client()
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def _refused_at_once(server: RedisServer, url: str, says: str) -> BrokerAuthError:
    """Enqueue through the public API: a BrokerAuthError (not BrokerUnavailable) that says
    ``says``, without redis-py's retries (a wrong password used to take ~3 s per call): on
    one connection, where each retry would open another."""
    app = Conveyor(url, prefix=unique_prefix())

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    before = _connections(server)
    with pytest.raises(BrokerAuthError) as caught:
        add.delay(1, 2)
    opened = _connections(server) - before - 1
    app.close()
    error = caught.value
    assert not isinstance(error, BrokerUnavailable)
    assert says in str(error)
    assert opened == 1, f"{opened} connections: the refusal was retried"
    _shows_no_secret(str(error), repr(error), repr(app))
    return error


CASES = {
    "wrong password": (lambda s: _url(s, ":" + quote("not-" + PASSWORD, safe="")), REFUSED),
    "no password": (_url, NO_PASSWORD),
    "unknown user": (lambda s: _user(s, "ghost", "app-secret-1"), REFUSED),
    "disabled user": (lambda s: _user(s, "off"), REFUSED),
    "wrong user password": (lambda s: _user(s, "app", "narrow-secret-3"), REFUSED),
    "NOPERM on a key": (lambda s: _user(s, "narrow"), NOT_PERMITTED),
    "NOPERM on a command": (lambda s: _user(s, "noscript"), NOT_PERMITTED),
    "NOPERM inside a script": (lambda s: _user(s, "noxadd"), NOT_PERMITTED),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_credentials_and_permissions_are_a_broker_auth_error(
    locked: RedisServer, case: str
) -> None:
    make_url, says = CASES[case]
    _refused_at_once(locked, make_url(locked), says)


@pytest.mark.parametrize("case", ["wrong password", "disabled user", "NOPERM on a key"])
def test_the_asyncio_path_and_the_admin_reads_say_the_same(locked: RedisServer, case: str) -> None:
    make_url, says = CASES[case]
    app = Conveyor(make_url(locked), prefix=unique_prefix())

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(BrokerAuthError, match=says):
        asyncio.run(add.delay_async(1, 2))
    with pytest.raises(BrokerAuthError, match=says):
        app.broker.stats()
    app.close()


_PIECES = ["@", ":", "/", "%", "%40", "?", "#", "&", "=", "+", " ", "é"]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=4).map("".join),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=10),
)
def test_any_wrong_password_is_refused_without_showing_it(
    locked: RedisServer, edge: str, core: str
) -> None:
    wrong = edge + core + edge
    error = _refused_at_once(locked, _url(locked, ":" + quote(wrong, safe="")), REFUSED)
    assert core not in str(error) and core not in repr(error)


def test_the_right_credentials_work(locked: RedisServer) -> None:
    for url in (_url(locked, ":" + ENCODED), _user(locked, "app")):
        app = Conveyor(url, prefix=unique_prefix())
        assert app.broker.stats() == []
        app.close()


# -- conveyor worker -----------------------------------------------------------------------


def _send(app: Conveyor, task: str, *args: Any) -> Any:
    (job,) = app.enqueue_many([Signature(app, f"jobs_app:{task}", args, {}, app.defaults)])
    return job


def _stops_with(worker: WorkerProcess, says: str) -> None:
    """The worker exits 1 within seconds, its last word the error, without the password."""
    began = time.monotonic()
    code = worker.wait(45)
    took = time.monotonic() - began
    out = worker.output()
    assert code == 1, out
    assert f"error: {says}" in out
    assert took < 30, took  # it gave up, instead of retrying a refusal for ever
    _shows_no_secret(out)


@pytest.mark.parametrize(
    "case", ["wrong password", "no password", "disabled user", "NOPERM on a key"]
)
def test_the_worker_stops_with_exit_1_and_the_message(
    locked: RedisServer, tmp_path: Path, case: str
) -> None:
    make_url, says = CASES[case]
    project = Project(tmp_path, make_url(locked), unique_prefix())
    try:
        _stops_with(project.worker(ready=False), says)
    finally:
        project.cleanup()


def test_the_worker_stops_when_its_user_loses_a_permission_mid_run(
    locked: RedisServer, tmp_path: Path
) -> None:
    _add_user(locked, "mid", "mid-secret-6", ("on", "~*", "+@all", "-@dangerous"))
    project = Project(tmp_path, _user(locked, "mid", "mid-secret-6"), unique_prefix())
    try:
        worker = project.worker()
        app = project.app()
        assert _send(app, "double", 21).result(timeout=20) == 42
        app.close()
        locked.client().execute_command("ACL", "SETUSER", "mid", "resetkeys", "~{elsewhere}:*")
        _stops_with(worker, NOT_PERMITTED)
    finally:
        project.cleanup()


# -- sentinels -----------------------------------------------------------------------------


@pytest.fixture
def sentinels(locked: RedisServer, tmp_path: Path) -> Iterator[list[RedisSentinel]]:
    found = [RedisSentinel(tmp_path / f"sentinel{i}", locked) for i in range(2)]
    try:
        yield found
    finally:
        for s in found:
            s.stop()


def _run(*args: str, project: Project) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.timeout(90)
def test_a_multi_sentinel_url_with_a_password_runs_jobs_and_shows_no_password(
    sentinels: list[RedisSentinel], tmp_path: Path
) -> None:
    """What crashed ``conveyor worker`` and ``conveyor info``: redact_url asked urlsplit for
    the port of ``h1:26379,h2:26379``. A dead sentinel first in the list is passed over."""
    hosts = ",".join([f"127.0.0.1:{_free_port()}", *(s.address for s in sentinels)])
    url = f"redis+sentinel://:{ENCODED}@{hosts}/mymaster/0"
    shown = f"redis+sentinel://:***@{hosts}/mymaster/0"
    project = Project(tmp_path, url, unique_prefix())
    try:
        worker = project.worker()
        app = project.app()
        assert repr(app) == f"<Conveyor {shown}>"
        jobs = [_send(app, "double", n) for n in range(5)]
        assert [j.result(timeout=20) for j in jobs] == [0, 2, 4, 6, 8]
        info = _run("info", "-A", "jobs_app", project=project)
        assert info.returncode == 0, info.stderr
        assert shown in "".join(info.stdout.split())  # the table may wrap the title
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        app.close()
    finally:
        project.cleanup()
    assert shown in worker.output()
    _shows_no_secret(worker.output(), info.stdout, info.stderr)


def test_sentinels_with_a_password_of_their_own(locked: RedisServer, tmp_path: Path) -> None:
    sentinel = RedisSentinel(tmp_path / "sentinel", locked, password="sentinel-secret-7")
    try:
        base = f"redis+sentinel://:{ENCODED}@{sentinel.address}/mymaster/0"
        app = Conveyor(base, prefix=unique_prefix())
        with pytest.raises(BrokerAuthError, match=r"\?sentinel_password=") as caught:
            app.broker.stats()
        _shows_no_secret(str(caught.value))
        app.close()
        app = Conveyor(base + "?sentinel_password=sentinel-secret-7", prefix=unique_prefix())

        @app.task
        def add(a: int, b: int) -> int:
            return a + b

        job = add.delay(1, 2)
        assert app.job(job.id).status.value == "queued"
        assert "sentinel-secret-7" not in repr(app)
        app.close()
    finally:
        sentinel.stop()


def test_closing_an_app_on_a_sentinel_url_closes_its_sentinel_connections(
    locked: RedisServer, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    # close() closed the master's pool, not those of the clients that asked the sentinel
    # for the master: a socket more per app closed, and per asyncio loop (each has its own).
    sentinel = RedisSentinel(tmp_path / "sentinel", locked)
    try:
        url = f"redis+sentinel://:{ENCODED}@{sentinel.address}/mymaster/0"
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            app = Conveyor(url, prefix=unique_prefix())

            @app.task
            def t() -> None: ...

            job = t.delay()

            async def look(job: Job[None] = job) -> None:
                with pytest.raises(TimeoutError):
                    await job.result_async(0)

            for _ in range(3):
                asyncio.run(look())
            app.close()
        assert len(os.listdir("/proc/self/fd")) <= before
        gc.collect()
        assert [str(w.message) for w in recwarn if w.category is ResourceWarning] == []
    finally:
        sentinel.stop()
