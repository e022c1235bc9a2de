"""The public surface is exactly ``__all__``; module layering points one way."""

from __future__ import annotations

import ast
import pathlib
import types

import conveyor
from conveyor.brokers._registry import BUILTIN

SRC = pathlib.Path(conveyor.__file__).parent


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        n
        for n in dir(conveyor)
        if not n.startswith("_") and not isinstance(getattr(conveyor, n), types.ModuleType)
    }
    assert set(conveyor.__all__) == public | {"__version__"}
    for name in conveyor.__all__:
        assert getattr(conveyor, name) is not None


def test_every_error_derives_from_conveyor_error() -> None:
    errors = [getattr(conveyor, n) for n in conveyor.__all__ if n.endswith(("Error", "Failed"))]
    errors += [conveyor.JobNotFound, conveyor.JobNotEnded, conveyor.JobCancelled, conveyor.JobDead]
    errors += [conveyor.LockLost]
    for err in errors:
        assert issubclass(err, conveyor.ConveyorError), err


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _files(sub: str) -> list[pathlib.Path]:
    target = SRC / sub
    if target.is_dir():
        return sorted(target.rglob("*.py"))
    return [target] if target.exists() else []


# Every adapter the registry opens, as the package or module its broker class is in.
ADAPTERS = tuple(a.broker.partition(":")[0] for a in BUILTIN)
DRIVERS = ("redis", "sqlite3", "psycopg", "psycopg_pool")


def test_worker_drives_the_port_only() -> None:
    for path in _files("worker"):
        names = _imports(path)
        assert not any(n.startswith(ADAPTERS) for n in names), path
        assert not any(n.split(".")[0] in DRIVERS for n in names), path


def test_only_the_factory_cli_and_testing_name_a_concrete_adapter() -> None:
    allowed = ("brokers", "cli", "testing", "stores")
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in allowed:
            continue
        names = _imports(path)
        assert not any(n.startswith(ADAPTERS) for n in names), rel


def test_leaves_import_no_upper_layer() -> None:
    upper = ("conveyor._app", "conveyor._task", "conveyor._job", "conveyor.worker", "conveyor.cli")
    leaves = ("_message.py", "_codec.py", "_values.py", "_checks.py", "_errors.py", "_clock.py")
    for leaf in (*leaves, "_backoff.py", "_cron.py", "_context.py", "_logging.py"):
        if (SRC / leaf).exists():
            names = _imports(SRC / leaf)
            assert not any(n.startswith(upper) for n in names), leaf


def test_no_forbidden_redis_commands_in_the_package() -> None:
    """No KEYS, CONFIG or FLUSH*: they need admin rights and stall a busy server."""
    redis_files = _files("brokers/redis")
    redis_files += sorted((SRC / "brokers" / "redis").glob("*.lua"))
    for path in redis_files:
        text = path.read_text().lower()
        for command in ("flushall", "flushdb", "config_set", "config_get", ".keys(", "'keys'"):
            assert command not in text, (path, command)
        assert '"keys"' not in text, path


INTEGRATIONS = (
    "prometheus_client",
    "opentelemetry",
    "sentry_sdk",
    "flask",
    "django",
    "django_tasks",
)


def test_only_contrib_imports_the_integrations_and_the_worker_never_contrib() -> None:
    """The core keeps its four runtime dependencies: each integration's library is imported
    inside ``contrib/`` only, and nothing but ``contrib/`` and ``cli/`` imports ``contrib``."""
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "contrib":
            continue
        names = _imports(path)
        assert not any(n.split(".")[0] in INTEGRATIONS for n in names), rel
        if rel.parts[0] != "cli":
            assert not any(n.startswith("conveyor.contrib") for n in names), rel


def test_middleware_is_public_and_typed() -> None:
    from conveyor import middleware

    assert conveyor.Middleware is middleware.Middleware
    assert set(middleware.__all__) >= {"Message", "Middleware", "Outcome", "Run", "WorkerProcess"}


def test_importing_conveyor_and_its_worker_loads_no_integration() -> None:
    import subprocess
    import sys

    code = (
        "import sys, conveyor, conveyor.worker, conveyor.cli, conveyor.testing;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{INTEGRATIONS!r} or m.startswith('conveyor.contrib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_dashboard_imports_its_web_stack() -> None:
    """starlette and uvicorn (the ``dashboard`` extra) are imported inside ``dashboard/``,
    and by ``conveyor dashboard`` when it runs; ``import conveyor.cli`` loads neither."""
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "dashboard" or rel.as_posix() == "cli/dashboard.py":
            continue
        names = _imports(path)
        assert not any(n.split(".")[0] in ("starlette", "uvicorn") for n in names), rel
    import subprocess
    import sys

    code = "import sys, conveyor.cli; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "starlette" not in out.stdout and "uvicorn" not in out.stdout


def _loaded_by(code: str) -> list[str]:
    """The modules of conveyor, rich and ctypes that ``code`` leaves loaded, in a fresh
    interpreter."""
    import subprocess
    import sys

    code += (
        "; import sys; print(' '.join(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('conveyor', 'rich', 'ctypes'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_importing_conveyor_loads_each_name_when_first_used() -> None:
    assert _loaded_by("import conveyor") == ["conveyor"]
    loaded = _loaded_by("from conveyor import Conveyor")
    assert "conveyor._app" in loaded
    assert "conveyor.workflows" not in loaded


def test_the_worker_command_loads_only_what_a_worker_runs() -> None:
    """No other command, no rich (tables), no scheduler or cron (an app with schedules
    loads them when its worker starts them), no ctypes (a job stopped from outside)."""
    loaded = _loaded_by(
        "import click; from conveyor.cli import cli; cli.get_command(click.Context(cli), 'worker')"
    )
    assert "conveyor.cli.worker" in loaded
    assert "conveyor.worker._worker" in loaded
    unwanted = [
        m
        for m in loaded
        if m.split(".")[0] in ("rich", "ctypes")
        or m in ("conveyor.scheduler", "conveyor._cron", "conveyor.contrib")
        or (
            m.startswith("conveyor.cli.")
            and m
            not in (
                "conveyor.cli._deferred",
                "conveyor.cli._group",
                "conveyor.cli._load",
                "conveyor.cli._logs",
                "conveyor.cli._workerrun",
                "conveyor.cli.worker",
            )
        )
    ]
    assert unwanted == []
