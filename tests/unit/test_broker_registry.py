"""The broker registry: URL schemes open the built-in adapters, and another package's
adapter, declared as a ``conveyor.brokers`` entry point, opens by its own scheme."""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from brokers import BROKERS
from conveyor import Conveyor
from conveyor._errors import ConfigurationError, InvalidURL
from conveyor.brokers import Adapter, check_url, open_broker
from conveyor.brokers._registry import BUILTIN, schemes
from conveyor.brokers.memory import MemoryBroker
from conveyor.testing import FakeClock, drain

_names = itertools.count()

ADAPTER_PACKAGE = """
from conveyor.brokers import Adapter, BrokerOptions
from conveyor.brokers.memory import MemoryBroker
from conveyor._errors import InvalidURL

ADAPTER = Adapter("{scheme}", ("{scheme}",), "{package}:SharedNothing", "{scheme}://name",
                  check="{package}:check")
NOT_AN_ADAPTER = "a string"
OPENED = []


def check(url):
    if url.endswith("/bad"):
        raise InvalidURL(f"bad {scheme} URL {{url!r}}: name a store")


class SharedNothing(MemoryBroker):
    @classmethod
    def from_url(cls, url, options: BrokerOptions):
        OPENED.append(url)
        return cls(options.clock, events_kept=options.events_kept)
"""


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], str]:
    """``install(scheme, value)``: a package on ``sys.path`` whose distribution declares the
    entry point ``scheme = value`` in ``conveyor.brokers`` (``value`` names ``{package}``);
    returns the package's name."""

    def install(scheme: str, value: str = "{package}:ADAPTER") -> str:
        package = f"broker_plugin_{next(_names)}"
        root = tmp_path / package
        (root / package).mkdir(parents=True)
        code = ADAPTER_PACKAGE.format(scheme=scheme, package=package)
        (root / package / "__init__.py").write_text(textwrap.dedent(code))
        info = root / f"{package}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
        entry = value.format(package=package)
        (info / "entry_points.txt").write_text(f"[conveyor.brokers]\n{scheme} = {entry}\n")
        monkeypatch.syspath_prepend(str(root))
        return package

    return install


def test_each_builtin_scheme_opens_its_adapter(tmp_path: Path) -> None:
    assert schemes()[:8] == [
        "memory",
        "sqlite",
        "redis",
        "rediss",
        "unix",
        "redis+sentinel",
        "redis+cluster",
        "rediss+cluster",
    ]
    for adapter in BUILTIN:
        broker_class = adapter.load()
        assert adapter.example.split("://")[0] in adapter.schemes
        assert broker_class.__module__.startswith(f"conveyor.brokers.{adapter.name}")
    with open_broker(f"SQLite:///{tmp_path}/a.db") as broker:
        assert type(broker).__name__ == "SQLiteBroker"


def test_an_installed_adapter_opens_by_its_scheme_and_runs_jobs(
    install: Callable[[str], str],
) -> None:
    package = install("nothing")
    assert "nothing" in schemes()
    assert check_url("nothing://jobs") == "nothing"
    with Conveyor("nothing://jobs", clock=FakeClock()) as app:

        @app.task
        def double(x: int) -> int:
            return 2 * x

        job = double.delay(21)
        drain(app)
        assert job.result() == 42
        assert isinstance(app.broker, MemoryBroker)
    assert sys.modules[package].OPENED == ["nothing://jobs"]


def test_an_installed_adapters_check_refuses_a_bad_url_where_the_app_is_made(
    install: Callable[[str], str],
) -> None:
    install("nothing")
    with pytest.raises(InvalidURL, match="bad nothing URL 'nothing://x/bad'"):
        Conveyor("nothing://x/bad")
    # Its message quoted the URL whole, password and all; Conveyor shows it redacted.
    for call in (Conveyor, open_broker):
        with pytest.raises(InvalidURL) as info:
            call("nothing://admin:hunter2@x/bad")
        assert "hunter2" not in str(info.value) and "admin:***@x" in str(info.value)


def test_an_adapter_imports_nothing_private() -> None:
    # The types its primitives take and return were only in conveyor._message.
    import conveyor.brokers

    for name in ("Envelope", "Delivery", "JobRecord", "JobStatus", "JobEntry", "QueueStats",
                 "WorkerInfo", "Events", "Claimed", "EVENTS_SLACK"):  # fmt: skip
        assert name in conveyor.brokers.__all__ and hasattr(conveyor.brokers, name)


@pytest.mark.parametrize(
    ("lease", "block"), [(30.0, float("nan")), (30.0, -1.0), (-5.0, 0.0), (0.0, 0.0)]
)
def test_fetch_refuses_a_lease_or_block_it_would_misread(lease: float, block: float) -> None:
    # block=nan waited for ever on an empty queue; lease=-5 handed out a job already
    # expired, handed out again at the next fetch.
    broker = MemoryBroker(FakeClock())
    with pytest.raises(ConfigurationError, match=r"bad (lease|block)"):
        broker.fetch(["default"], "c", 1, lease, block)
    with pytest.raises(ConfigurationError, match="bad lease"):
        broker.renew([], -1.0)


def test_an_installed_package_cannot_take_a_builtin_scheme(
    install: Callable[[str], str], tmp_path: Path
) -> None:
    package = install("sqlite")
    with open_broker(f"sqlite:///{tmp_path}/b.db") as broker:
        assert type(broker).__name__ == "SQLiteBroker"
    assert package not in sys.modules  # never even loaded


def test_an_entry_point_that_is_not_an_adapter_says_which_and_what_to_do(
    install: Callable[[str, str], str],
) -> None:
    install("odd", "{package}:NOT_AN_ADAPTER")
    with pytest.raises(ConfigurationError, match=r"entry point 'odd'.*fix or uninstall"):
        check_url("odd://x")


def test_an_unknown_scheme_lists_the_schemes_there_are(install: Callable[[str], str]) -> None:
    install("nothing")
    with pytest.raises(InvalidURL) as caught:
        check_url("nope://user:hunter2@h/0")
    said = str(caught.value)
    assert "unknown broker scheme 'nope'" in said and "hunter2" not in said
    assert "memory://, sqlite://, redis://" in said and "nothing://" in said


def test_an_adapter_that_names_no_broker_class_is_refused() -> None:
    adapter = Adapter("odd", ("odd",), "conveyor._clock:FakeClock", "odd://")
    with pytest.raises(ConfigurationError, match=r"not a conveyor\.brokers\.Broker subclass"):
        adapter.load()


def test_every_registered_adapter_is_tested() -> None:
    """``tests/brokers.py``, which every test tier reads, has an entry per adapter of the
    registry: a new adapter runs the conformance suites, the model and its tiers' tests."""
    assert sorted({b.adapter_name for b in BROKERS}) == sorted(a.name for a in BUILTIN)
    assert len({b.name for b in BROKERS}) == len(BROKERS)  # one test id each


def test_no_adapter_overrides_a_public_method_of_the_port() -> None:
    """The base checks arguments, translates errors and blocks once for every adapter; an
    adapter implements the primitives only (``kv`` and ``from_url`` are its own)."""
    from conveyor.brokers import Broker

    public = {n for n in dir(Broker) if not n.startswith("_")} - {"kv", "from_url", "url"}
    for adapter in BUILTIN:
        cls = adapter.load()
        overridden = sorted(n for n in public if getattr(cls, n) is not getattr(Broker, n))
        assert overridden == [], f"{adapter.name} overrides {overridden}"
