"""Every example runs as the README says: a `conveyor worker` and the producer, on SQLite."""

from __future__ import annotations

import ast
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ, CONVEYOR_URL=f"sqlite:///{folder}/conveyor.db", PYTHONPATH=str(folder))
    env.pop("PYTHONSAFEPATH", None)
    return env


def _copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(EXAMPLES / name, target)
    return target


def _run_with_worker(
    folder: Path, module: str, *scripts: str, worker_args: tuple[str, ...] = ()
) -> str:
    worker = ["-m", "conveyor", "worker", module, "-c", "4", *worker_args]
    return _serve(folder, worker, [[script] for script in scripts], _env(folder))


def _serve(
    folder: Path, worker_args: list[str], programs: list[list[str]], env: dict[str, str]
) -> str:
    """Run each of ``programs`` (``python`` arguments) while ``python *worker_args`` runs,
    then stop the worker with SIGTERM; return what the programs printed."""
    worker = subprocess.Popen(
        [sys.executable, *worker_args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out = ""
        for program in programs:
            done = subprocess.run(
                [sys.executable, *program],
                check=False,
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert done.returncode == 0, done.stderr
            out += done.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    log = worker.stdout.read().decode() if worker.stdout else ""
    assert code == 0, log
    return out


@pytest.mark.timeout(120)
def test_thumbnails(tmp_path: Path) -> None:
    out = _run_with_worker(
        _copy("thumbnails", tmp_path), "tasks", "producer.py", "async_producer.py"
    )
    assert "cat_320w.webp" in out
    assert "photo0_640w.webp" in out
    assert "late_100w.webp" in out
    assert "awaited 5 jobs" in out


@pytest.mark.timeout(120)
def test_rq_style(tmp_path: Path) -> None:
    out = _run_with_worker(_copy("rq_style", tmp_path), "queue_app", "producer.py")
    assert "'region': 'emea'" in out
    assert "'year': 2025" in out


@pytest.mark.timeout(120)
def test_workflows(tmp_path: Path) -> None:
    out = _run_with_worker(_copy("workflows", tmp_path), "tasks", "producer.py")
    assert "chain: 5.0 C" in out
    assert "group: [5.0, 7.0, 8.0, 5.0]" in out
    assert "chord: 8.0" in out


@pytest.mark.timeout(60)
def test_primitives(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "primitives.py", tmp_path)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "primitives.py"],
        check=False,
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert "fencing token 1" in done.stdout
    assert "visits: 3" in done.stdout
    assert time.monotonic() - started < 50


@pytest.mark.timeout(120)
def test_testing(tmp_path: Path) -> None:
    """The example's own tests: unit tests on the pytest plugin's fixtures, and one against
    a real `conveyor worker` process."""
    _pytest_in(_copy("testing", tmp_path), "5 passed")


def _pytest_in(folder: Path, passed: str) -> None:
    """The example's own tests, run in its folder as its README says."""
    env = {k: v for k, v in _env(folder).items() if not k.startswith(("PYTEST_", "CONVEYOR_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        check=False,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert passed in done.stdout


@pytest.mark.timeout(120)
def test_flask(tmp_path: Path) -> None:
    """The shop's tests: Flask's test client and drain, then a real `flask conveyor worker`
    process (threads, and processes whose children load the app again)."""
    _pytest_in(_copy("flask", tmp_path), "5 passed")


@pytest.mark.timeout(120)
def test_fastapi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's own tests (ASGI client, memory broker), then the app under uvicorn beside a
    `conveyor worker` process, and its client streaming a report's progress."""
    folder = _copy("fastapi", tmp_path)
    _pytest_in(folder, "7 passed")
    port = _free_port()
    monkeypatch.setenv("API_URL", f"http://127.0.0.1:{port}")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:api", "--port", str(port)],
        cwd=folder,
        env=_env(folder),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _await_port(port, server)
        out = _run_with_worker(folder, "tasks", "client.py")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    log = server.stdout.read().decode() if server.stdout else ""
    assert code in (0, -signal.SIGTERM), log  # uvicorn exits by the signal it stopped on
    assert "Application startup complete" in log  # the lifespan opened the app
    lines = out.splitlines()
    shown = [ast.literal_eval(line.partition(" ")[2]) for line in lines if line[:8] == "progress"]
    fractions = [progress["fraction"] for progress in shown]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # as the report went
    assert "progress {'fraction': 1.0, 'note': 'row 20 of 20'}" in lines
    assert "succeeded {'result': {'rows': 20, 'total': 210}}" in lines
    assert "welcome: 200 {'result': 'welcome mail sent to ada@example.com'}" in lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _await_port(port: int, process: subprocess.Popen[bytes]) -> None:
    """Return once ``process`` accepts connections on ``port`` (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} (exit code {process.poll()})")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_observability(tmp_path: Path, pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()  # for the worker's /metrics
    monkeypatch.setenv("METRICS_PORT", str(port))
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    folder = _copy("observability", tmp_path)
    args = ("--metrics-port", str(port), "--pool", pool)
    out = _run_with_worker(folder, "tasks", "producer.py", worker_args=args)
    assert "result: invoice for order 1 of acme" in out  # the tenant header
    assert "result: charged order 2 of acme" in out
    assert "failed: builtins.ValueError: card declined for order 3" in out
    assert "1 x POST /checkout" in out  # one trace, from the request span...
    assert "3 x send default" in out  # ...through each enqueue...
    assert "4 x process default" in out  # ...into each run, the retry's too
    assert 'status="retried",task="tasks:charge"} 1.0' in out
    assert 'status="failed",task="tasks:charge"} 1.0' in out


def _django(folder: Path, env: dict[str, str]) -> str:
    """The shop: migrate, a ``manage.py conveyor_worker`` process, and ``place_order``
    (a transaction that enqueues on commit, then waits for the task result)."""
    migrate = [sys.executable, "manage.py", "migrate", "-v", "0"]
    subprocess.run(migrate, cwd=folder, env=env, check=True, timeout=60)
    worker = ["manage.py", "conveyor_worker", "-q", "default,mail", "-c", "2"]
    return _serve(
        folder, worker, [["manage.py", "place_order", "ann@example.com", "lamp", "2"]], env
    )


def _shop_env(folder: Path) -> dict[str, str]:
    env = _env(folder)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py names the shop's
    env.pop("POSTGRES_DB", None)
    return env


def _check_shop(out: str) -> None:
    assert "placed order 1: lamp x2; receipt task READY (not sent yet)" in out
    assert "receipt task SUCCESSFUL: receipt for order 1: lamp x2 sent to ann@example.com" in out
    assert "order 1 receipt_sent=True" in out
    assert "orders in the shop: 1" in out
    assert "conveyor task: restocked 10 x lamp" in out


@pytest.mark.timeout(120)
def test_django(tmp_path: Path) -> None:
    folder = _copy("django", tmp_path)
    _check_shop(_django(folder, _shop_env(folder)))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL (127.0.0.1:5432, user postgres),
    dropped after the session."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 as user postgres: {exc}")
    name = f"conveyor_example_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.timeout(120)
def test_django_on_postgresql(tmp_path: Path, postgres_database: str) -> None:
    folder = _copy("django", tmp_path)
    env = dict(_shop_env(folder), POSTGRES_DB=postgres_database)
    _check_shop(_django(folder, env))
    assert not (folder / "shop.sqlite3").exists()  # the shop's data went to PostgreSQL
