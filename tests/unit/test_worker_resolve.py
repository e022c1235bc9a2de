"""Task resolution: registered names always, callables only from trusted packages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conveyor import Conveyor, InvalidOption, JobDead, UntrustedTask
from conveyor._message import Envelope
from conveyor.testing import drain
from conveyor.worker import Worker
from conveyor.worker._resolve import Resolver, UnknownTask, trusted_packages


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    root = tmp_path / "acme"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "jobs.py").write_text(
        "import os\nfrom os import system\n\n"
        "VALUE = 3\n\n"
        "class Report:\n    @staticmethod\n    def build(year):\n        return year\n\n"
        "async def fetch():\n    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "acme"


def test_trusted_packages_are_top_levels_from_every_source() -> None:
    found = trusted_packages("myapp.tasks:app", ["reports", "a.b, c"], ("d",))
    assert found == frozenset({"myapp", "reports", "a", "c", "d"})
    assert trusted_packages(None) == frozenset()


def test_conveyor_is_not_trusted_for_being_the_module_a_worker_starts_with() -> None:
    """Its entry points (the demo's tasks, Django's) register their tasks; nothing else of
    Conveyor is a job to run by name. Trusted by name, it would be."""
    assert trusted_packages("conveyor.contrib.django._boot:app") == frozenset()
    assert trusted_packages("conveyor.cli._demo_tasks", ["conveyor"]) == {"conveyor"}


def test_registered_tasks_resolve_whatever_their_name() -> None:
    app = Conveyor("memory://")

    @app.task(name="os:system")  # a registered name is the app's own choice
    def mine() -> str:
        return "mine"

    resolver = Resolver(app.registry, frozenset())
    assert resolver.resolve("os:system").fn is mine.fn


def test_a_registered_task_resolves_to_one_kept_resolved_and_follows_its_registry() -> None:
    """The resolver keeps one ``Resolved`` per registered task (not one per job); another
    task under that name in the registry is not hidden behind the kept one."""
    app, other = Conveyor("memory://"), Conveyor("memory://")

    @app.task(name="report")
    def first() -> int:
        return 1

    @other.task(name="report")
    async def second() -> int:
        return 2

    registry = dict(app.registry)
    resolver = Resolver(registry, frozenset())
    assert resolver.resolve("report") is resolver.resolve("report")
    assert resolver.resolve("report").fn is first.fn
    registry["report"] = other.registry["report"]
    found = resolver.resolve("report")
    assert found.fn is second.fn and found.is_async


def test_a_task_its_module_registers_when_imported_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A framework's task (Django's) registers with the app when its module is imported:
    the module's attribute is the framework's object, the registered runner is what runs."""
    (tmp_path / "selfreg_app.py").write_text(
        "from conveyor import Conveyor\napp = Conveyor('memory://')\n"
    )
    (tmp_path / "selfreg.py").write_text(
        "from selfreg_app import app\n\n"
        "class Wrapped:  # what a framework's decorator leaves under the name\n"
        "    pass\n\n"
        "def runner():\n    return 'the runner'\n\n"
        "app.task(name='selfreg:work')(runner)\n"
        "work = Wrapped()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from selfreg_app import app  # type: ignore[import-not-found]

    resolver = Resolver(app.registry, frozenset({"selfreg"}))
    assert resolver.resolve("selfreg:work").fn() == "the runner"


def test_callables_from_a_trusted_package(pkg: str) -> None:
    resolver = Resolver({}, frozenset({pkg}))
    assert resolver.resolve("acme.jobs:Report.build").fn(2024) == 2024
    assert resolver.resolve("acme.jobs:fetch").is_async


@pytest.mark.parametrize(
    "name",
    [
        "os:system",
        "builtins:eval",
        "subprocess:run",
        "acme.jobs:system",  # imported into a trusted module, but it is os.system
        "acme.jobs:os.system",
        "acme.jobs:__builtins__.eval",
    ],
)
def test_untrusted_callables_are_refused(pkg: str, name: str) -> None:
    with pytest.raises(UntrustedTask, match="untrusted callable"):
        Resolver({}, frozenset({pkg})).resolve(name)


def test_untrusted_modules_are_not_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sideeffect.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UntrustedTask):
        Resolver({}, frozenset({"acme"})).resolve("sideeffect:anything")
    assert "sideeffect" not in sys.modules


@pytest.mark.parametrize(
    "name", ["nothing_registered", "acme.jobs:missing", "acme.nope:f", "acme.jobs:VALUE", "a b:c"]
)
def test_unknown_names(pkg: str, name: str) -> None:
    with pytest.raises(UnknownTask, match="unknown task"):
        Resolver({}, frozenset({pkg})).resolve(name)


def test_a_dunder_module_of_a_trusted_package_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``entrypkg.__main__:x`` imported (ran) the package's entry point in the consumer's
    thread: a server or a CLI loop there wedged the worker, and the next worker with it. A
    module whose name has one leading underscore is a task module like any other."""
    root, marker = tmp_path / "entrypkg", tmp_path / "main-ran"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "__main__.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n\ndef x():\n"
        "    return 'x'\n"
    )
    (root / "_private.py").write_text("def job(tag):\n    return tag\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        resolver = Resolver({}, frozenset({"entrypkg"}))
        for name in ("entrypkg.__main__:x", "entrypkg.__init__:x"):
            with pytest.raises(UntrustedTask) as caught:
                resolver.resolve(name)
            module = name.partition(":")[0]
            assert str(caught.value) == (
                f"untrusted callable {name!r}: dunder modules are refused ({module} is not "
                "imported)"
            )
        assert not marker.exists() and "entrypkg.__main__" not in sys.modules
        assert resolver.resolve("entrypkg._private:job").fn("p") == "p"

        app = Conveyor("memory://")  # and through a worker: dead-lettered, the next job runs
        main = b'{"id":"main","task":"entrypkg.__main__:x"}'
        after = b'{"id":"after","task":"entrypkg._private:job","args":["after"]}'
        app.broker.enqueue([Envelope("main", "default", main)])
        app.broker.enqueue([Envelope("after", "default", after)])
        drain(app, timeout=30, trust=["entrypkg"])
        with pytest.raises(JobDead, match="dunder modules are refused"):
            app.job("main").result(timeout=5)
        assert app.job("after").result(timeout=5) == "after"
        assert not marker.exists()
    finally:
        for name in [m for m in sys.modules if m.partition(".")[0] == "entrypkg"]:
            del sys.modules[name]


@pytest.mark.parametrize(
    ("entry", "named"),
    [(e, e) for e in (".", ".acme", "acme.", "acme..jobs", "my-app", "a b")] + [("acme, .", ".")],
)
def test_a_trust_entry_that_names_no_package_is_refused(entry: str, named: str) -> None:
    """``trust=["."]`` (or ``--trust .``) trusted the package ``""``, which every callable
    without a module seemed to be in: ``myapp.tasks:os.sys.stderr.write`` ran."""
    with pytest.raises(InvalidOption) as caught:
        trusted_packages(None, [entry])
    text = str(caught.value)
    assert "trust takes Python package names, dotted identifiers such as myapp" in text
    assert text.endswith(f"{named!r} is not one; write trust=['myapp'] (--trust myapp)")
    app = Conveyor("memory://")
    with pytest.raises(InvalidOption, match="trust takes Python package names"):
        Worker(app, trust=[entry])
    with pytest.raises(InvalidOption, match="trust takes Python package names"):
        Conveyor("memory://", trust=[entry])  # at once, not when a worker starts
    assert trusted_packages(None, ["acme._jobs, shop", " reports "]) == {"acme", "shop", "reports"}


@pytest.mark.parametrize("also", [(), ("",)], ids=["package", "and-empty"])
@pytest.mark.parametrize("what", ["os.environ._data.clear", "os.sys.modules.clear"])
def test_a_callable_without_a_module_is_refused_whatever_is_trusted(
    pkg: str, what: str, also: tuple[str, ...]
) -> None:
    """A built-in object's method has no ``__module__``: it was taken to be in the package
    ``""`` (trusted by ``trust=["."]``), else refused with the advice to start the worker
    with ``--trust an unknown module``."""
    resolver = Resolver({}, frozenset({pkg, *also}))
    name = f"{pkg}.jobs:{what}"
    with pytest.raises(UntrustedTask) as caught:
        resolver.resolve(name)
    assert str(caught.value) == (
        f"untrusted callable {name!r}: it names a builtin_function_or_method that has no "
        "module (__module__ is not set), so no trusted package can vouch for it; enqueue a "
        "function defined in a module of a trusted package"
    )
