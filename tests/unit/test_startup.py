"""What the ``conveyor`` command's process leaves unloaded until it is used (docs/architecture.md,
"Start-up"): each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor import _logging
from conveyor.cli import _fast, cli
from conveyor.cli import worker as worker_cli


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_redis_py_imported_by_the_command_leaves_importlib_metadata_unloaded() -> None:
    code = (
        "import sys; from conveyor.cli import _deferred; _deferred.defer_all(); import redis;"
        "import conveyor.brokers.redis; print('email' in sys.modules, 'zipfile' in sys.modules)"
    )
    assert _run(code) == "False False"


def test_a_deferred_module_works_as_usual_when_used() -> None:
    code = (
        "from conveyor.cli import _deferred; _deferred.defer_all(); import redis;"
        "import importlib.metadata as m; from importlib.metadata import version;"
        "import importlib; print(version('redis') == redis.__version__, m is importlib.metadata,"
        " type(m).__name__)"
    )
    assert _run(code) == "True True module"


def test_threads_using_a_deferred_module_at_once_all_get_it_loaded() -> None:
    code = (
        "import threading; from conveyor.cli import _deferred; _deferred.defer_all();"
        "import importlib.metadata as m; found = [];"
        "go = threading.Barrier(8);"
        "run = lambda: (go.wait(), found.append(m.version('redis')));"
        "ts = [threading.Thread(target=run) for _ in range(8)];"
        "[t.start() for t in ts]; [t.join() for t in ts]; print(len(set(found)), len(found))"
    )
    assert _run(code) == "1 8"


def test_the_command_reads_its_version_from_the_deferred_metadata() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conveyor", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("conveyor, version ")


def test_a_plain_worker_command_line_runs_without_click(tmp_path: Path) -> None:
    (tmp_path / "probe_app.py").write_text(
        "import sys\nprint('click' in sys.modules, 'conveyor.cli._group' in sys.modules)\n"
        "sys.exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", "probe_app", "-c", "2", "--url", "memory://"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == "False False"


LINES = [
    ["worker", "shop.tasks"],
    ["worker", "-A", "shop.tasks", "-c", "3", "--pool", "async", "--lease", "12.5"],
    ["worker", "shop.tasks:app", "-q", "a,b", "--queues=c", "--trust", "x", "--grace", "0"],
    ["worker", "--max-deliveries=2", "shop.tasks", "--max-jobs-per-child", "7"],
    ["worker", "shop.tasks", "--max-child-memory", "512", "--metrics-port", "0"],
    ["worker", "shop.tasks", "-A", "shop.tasks", "--url", "redis://127.0.0.1/1"],
    ["worker", "shop.tasks", "--log-level", "DEBUG", "--log-format", "json", "-c", "1"],
    ["worker", "shop.tasks", "--url="],
]
ENVIRONMENTS = [
    {},
    {"CONVEYOR_URL": "redis://127.0.0.1/2", "CONVEYOR_LOG_LEVEL": "warning"},
    {"CONVEYOR_URL": "", "CONVEYOR_LOG_FORMAT": "json", "CONVEYOR_LOG_LEVEL": "15"},
]


@pytest.mark.parametrize("environ", ENVIRONMENTS)
@pytest.mark.parametrize("line", LINES)
def test_the_plain_reader_reads_a_line_as_click_does(
    line: list[str], environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the worker gets (app, URL, options, log setup) is the same either way."""
    for name in ("CONVEYOR_URL", "CONVEYOR_LOG_LEVEL", "CONVEYOR_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(_logging, "configure", lambda level, fmt: seen.update(log=(level, fmt)))
    monkeypatch.setattr(worker_cli, "load_app", lambda spec: (None, spec.partition(":")[0]))

    def fake_run(app: Any, spec: str, *, url: str | None = None, **options: Any) -> None:
        seen.update(spec=spec, url=url, options=options)

    monkeypatch.setattr(worker_cli, "run_worker", fake_run)
    result = CliRunner().invoke(cli, line, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    command = _fast.worker_command(line)
    assert command is not None
    spec = command.spec if ":" in command.spec else command.spec.partition(":")[0]
    level, fmt = seen["log"]
    assert (spec, command.url, command.options) == (seen["spec"], seen["url"], seen["options"])
    assert (command.log_level, command.log_format) == (level, fmt)


@pytest.mark.parametrize(
    "line",
    [
        [],
        ["worker"],
        ["-v", "worker", "shop.tasks"],
        ["worker", "-h"],
        ["worker", "shop.tasks", "--help"],
        ["worker", "a", "b"],
        ["worker", "a", "-A", "b"],
        ["worker", "shop.tasks", "-c", "0"],
        ["worker", "shop.tasks", "-c", "+3"],
        ["worker", "shop.tasks", "-c3"],
        ["worker", "shop.tasks", "-c"],
        ["worker", "shop.tasks", "--lease", "nan"],
        ["worker", "shop.tasks", "--lease", "0.05"],
        ["worker", "shop.tasks", "--metrics-port", "70000"],
        ["worker", "shop.tasks", "--pool", "Threads"],
        ["worker", "shop.tasks", "--log-level", "loud"],
        ["worker", "shop.tasks", "--log-level="],
        ["worker", "shop.tasks", "--url", "-x"],
        ["worker", "shop.tasks", "--", "-c"],
        ["worker", "shop.tasks", "--unknown", "1"],
        ["info", "-A", "shop.tasks"],
    ],
)
def test_what_the_plain_reader_leaves_to_click(line: list[str]) -> None:
    assert _fast.worker_command(line) is None


def test_a_bad_log_level_in_the_environment_is_left_to_click(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_LOG_LEVEL", "loud")
    assert _fast.worker_command(["worker", "shop.tasks"]) is None
    monkeypatch.setenv("CONVEYOR_LOG_LEVEL", "debug")
    assert _fast.worker_command(["worker", "shop.tasks"]) is not None


def test_importing_a_module_of_a_deferred_package_loads_the_package_first() -> None:
    code = (
        "import sys; from conveyor.cli import _deferred; _deferred.defer_all();"
        "import importlib.metadata._meta;"
        "print(type(sys.modules['importlib.metadata']).__name__)"
    )
    assert _run(code) == "module"


_DEFER = "from conveyor.cli import _deferred; _deferred.defer_all()"


def test_a_plain_redis_client_in_the_command_leaves_cluster_sentinel_and_asyncio_unloaded() -> None:
    code = (
        _DEFER + "; import sys, conveyor.brokers.redis;"
        "from conveyor.brokers.redis import _connect;"
        "_connect.connect(_connect.parse('redis://127.0.0.1:1/0'));"
        "print(sorted(m for m in ('redis.cluster', 'redis.sentinel', 'redis.asyncio.client',"
        " 'redis.keyspace_notifications', 'redis.commands.cluster') if m in sys.modules))"
    )
    assert _run(code) == "[]"


# Every name redis-py exports, as the same object: its module and name, or its value.
_NAMES = (
    "import redis, redis.asyncio, redis.commands, types;"
    "show = lambda v: v.__name__ if isinstance(v, types.ModuleType) else"
    " sorted(v) if isinstance(v, frozenset) else"
    " getattr(v, '__module__', '') + '.' + getattr(v, '__qualname__', repr(v));"
    "print([(p.__name__, n, show(getattr(p, n)))"
    " for p in (redis, redis.asyncio, redis.commands) for n in getattr(p, '__all__', ())],"
    " redis.__version__, redis.VERSION, dir(redis) == sorted(vars(redis)))"
)


def test_redis_pys_names_are_the_same_with_its_packages_deferred() -> None:
    assert _run(_DEFER + ";" + _NAMES) == _run(_NAMES)


def test_the_deferred_packages_run_their_init_for_a_name_they_do_not_reexport() -> None:
    code = (
        _DEFER + "; import sys, redis; print(type(redis).__name__, redis.int_or_str('7'),"
        " type(redis).__name__, 'redis.cluster' in sys.modules)"
    )
    assert _run(code) == "_Reexports 7 module True"


# A thread looks names up while another runs ``redis/__init__`` (it is stopped midway, at
# its import of ``redis.sentinel``, until the lookups are done or wait for it).
_MIDWAY = """
import sys, threading
import redis
found = {}
def look_up():
    for name in ("Redis", "Subscription", "from_url", "__version__", "exceptions", "VERSION"):
        try:
            found[name] = getattr(redis, name) is not None
        except AttributeError as exc:
            found[name] = type(exc).__name__
other = threading.Thread(target=look_up)
class Midway:
    def find_spec(self, name, path=None, target=None):
        if name == "redis.sentinel" and not other.is_alive() and not found:
            other.start()
            other.join(0.5)  # a lookup that waits for the __init__ is still waiting
        return None
sys.meta_path.insert(0, Midway())
redis.int_or_str
other.join()
print(found)
"""


def test_a_thread_looking_up_names_while_another_runs_the_init_gets_them() -> None:
    assert _run(_DEFER + "\n" + _MIDWAY) == (
        "{'Redis': True, 'Subscription': True, 'from_url': True, '__version__': True,"
        " 'exceptions': True, 'VERSION': True}"
    )


def test_a_name_a_program_assigned_stays_when_the_deferred_init_runs_later() -> None:
    code = (
        _DEFER + "; import redis, redis.asyncio;"
        "Mine = type('Mine', (redis.Redis,), {}); redis.Redis = Mine;"
        "redis.asyncio.Redis = int;"
        "redis.VERSION, dir(redis.asyncio);"  # each runs its package's __init__
        "print(redis.Redis is Mine, redis.asyncio.Redis is int, redis.StrictRedis.__name__)"
    )
    assert _run(code) == "True True Redis"


# Modules a program imports first; redis-py's private ones may need the order its
# ``__init__`` imports them in (``redis._parsers.response_callbacks`` does).
_FIRST = (
    "redis.client",
    "redis.cluster",
    "redis.sentinel",
    "redis.exceptions",
    "redis.asyncio.client",
    "redis.asyncio.cluster",
    "redis.commands.search.field",
    "redis.keyspace_notifications",
)


@pytest.mark.parametrize("module", _FIRST)
def test_a_module_of_redis_py_imported_first_works_with_its_packages_deferred(module: str) -> None:
    code = f"import {module}, redis; print(redis.Redis.__module__, redis.RedisCluster.__module__)"
    assert _run(_DEFER + ";" + code) == "redis.client redis.cluster"


def test_every_module_of_redis_py_imports_as_it_does_without_the_deferral() -> None:
    code = (
        "import importlib, pkgutil, redis\n"
        "failed = []\n"
        "for m in pkgutil.walk_packages(redis.__path__, 'redis.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except Exception as exc:\n"
        "        failed.append((m.name, type(exc).__name__))\n"
        "print(len(failed), failed)\n"
    )
    assert _run(_DEFER + "\n" + code) == _run(code)


def test_clients_of_every_redis_url_are_built_the_same_with_its_packages_deferred() -> None:
    code = (
        "from conveyor.brokers.redis import _connect as c\n"
        "def kind(client):\n"
        "    pool = client.connection_pool\n"
        "    return type(client).__module__, type(pool).__name__, pool.connection_class.__name__\n"
        "for url in ('redis://h:1/0', 'rediss://h:1/0', 'unix:///tmp/r.sock?db=1',\n"
        "            'redis+sentinel://h:1/mymaster/0', 'redis+cluster://h:1,h:2',\n"
        "            'rediss+cluster://h:1'):\n"
        "    target = c.parse(url)\n"
        "    owner = c.slot_owner(target, 'conveyor')\n"
        "    print(url, kind(c.connect(target, owner)), kind(c.connect_async(target, owner)))\n"
    )
    assert _run(_DEFER + "\n" + code) == _run(code)


def test_the_command_freezes_what_its_own_imports_made_and_collects_after() -> None:
    code = (
        "import gc, sys; from conveyor import cli; from conveyor.cli import _group;"
        "_group.run = lambda *a: print(gc.isenabled(), gc.get_freeze_count() > 10000);"
        "sys.argv = ['conveyor', 'info']; cli.main()"
    )
    assert _run(code) == "True True"
