"""The producer side of the public API: tasks, options, enqueue, bad input writes nothing."""

from __future__ import annotations

import datetime as dt
import os.path
import subprocess
import sys

import pytest

from conveyor import (
    ConfigurationError,
    Conveyor,
    InvalidName,
    InvalidOption,
    InvalidURL,
    JobNotFound,
    JobStatus,
    PayloadTooLarge,
    SerializationError,
    ValidationError,
)
from conveyor._clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Conveyor:
    return Conveyor("memory://", clock=clock)


def _depth(app: Conveyor) -> int:
    return sum(s.queued + s.scheduled for s in app.broker.stats())


def test_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_URL", raising=False)
    assert Conveyor().url == "sqlite:///./conveyor.db"
    monkeypatch.setenv("CONVEYOR_URL", "memory://")
    assert Conveyor().url == "memory://"
    assert Conveyor("sqlite:///x.db").url == "sqlite:///x.db"


@pytest.mark.parametrize("url", ["localhost:6379", "http://x", "mysql://db"])
def test_bad_url_is_refused_when_the_app_is_made(url: str) -> None:
    with pytest.raises(InvalidURL, match="redis://"):
        Conveyor(url)


def test_task_with_and_without_options(app: Conveyor) -> None:
    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(queue="images", priority=7, retries=3, timeout=5, name="resize")
    def resize(path: str, width: int) -> str:
        return f"{path}@{width}"

    assert plain(2) == 2  # calling a task runs it here
    assert resize.name == "resize"
    assert resize.opts.queue == "images" and resize.opts.retries == 3
    assert app.registry["resize"] is resize
    job = resize.delay("a.png", 640)
    assert job.status is JobStatus.QUEUED
    msg = app.codec.decode_message(app.broker.fetch(["images"], "t", 1, 30, 0)[0].payload)
    assert (msg.task, msg.args, msg.priority, msg.timeout) == ("resize", ["a.png", 640], 7, 5.0)


def test_options_delay_and_eta_schedule(app: Conveyor, clock: FakeClock) -> None:
    @app.task
    def f() -> None: ...

    assert f.options(delay=30).delay().status is JobStatus.SCHEDULED
    eta = dt.datetime.fromtimestamp(clock.time() + 60, dt.UTC)
    assert f.options(eta=eta).delay().status is JobStatus.SCHEDULED
    assert f.options(delay=dt.timedelta(seconds=0)).delay().status is JobStatus.QUEUED
    clock.advance(31)
    assert [len(app.broker.fetch(["default"], "t", 10, 30, 0))] == [2]


def test_a_later_delay_of_0_replaces_a_tasks_eta(app: Conveyor, clock: FakeClock) -> None:
    eta = dt.datetime.fromtimestamp(clock.time() + 3600, dt.UTC)

    @app.task(eta=eta)
    def report() -> None: ...

    assert report.delay().status is JobStatus.SCHEDULED
    assert report.options(delay=0).delay().status is JobStatus.QUEUED  # 0 is now


def test_app_options_change_a_tasks_own_options_not_the_apps(app: Conveyor) -> None:
    """``app.options(...).enqueue(task)`` keeps what the task set and the options do not
    name (its queue, retries, priority), as ``task.options(...)`` does."""

    @app.task(queue="images", retries=3, priority=7)
    def resize(x: int) -> int:
        return x

    app.options(delay=5).enqueue(resize, 1)
    app.options(queue="fast").enqueue(resize, 2)
    app.options(queue="fast").enqueue(os.path.join, "a")  # a plain callable: the app's
    found = [
        app.codec.decode_message(d.payload)
        for q in ("images", "fast")
        for d in app.broker.fetch([q], "t", 10, 30, 0)
    ]
    assert [(m.queue, m.retries, m.priority) for m in found] == [
        ("fast", 3, 7),
        ("fast", 0, 0),
    ]
    (scheduled,) = app.broker.entries(JobStatus.SCHEDULED, "images", 10, 0)
    assert app.codec.decode_message(scheduled.payload).retries == 3


def test_a_rate_key_without_a_rate_is_refused(app: Conveyor) -> None:
    @app.task
    def send(i: int) -> None: ...

    with pytest.raises(InvalidOption, match="rate_key='tenant:1' without rate="):
        send.options(rate_key="tenant:1").delay(1)
    assert _depth(app) == 0
    assert send.options(rate="10/s", rate_key="tenant:1").delay(1).status is JobStatus.QUEUED


def test_rq_style_enqueue_of_any_importable_callable(app: Conveyor) -> None:
    job = app.options(queue="slow", priority=2).enqueue(os.path.join, "a", "b")
    delivery = app.broker.fetch(["slow"], "t", 1, 30, 0)[0]
    msg = app.codec.decode_message(delivery.payload)
    assert (msg.task, msg.args, delivery.id) == ("posixpath:join", ["a", "b"], job.id)


def test_enqueue_refuses_lambdas_and_main(app: Conveyor) -> None:
    with pytest.raises(ValidationError, match="module level"):
        app.enqueue(lambda: 1)

    def local() -> None: ...

    with pytest.raises(ValidationError, match="module level"):
        app.enqueue(local)
    assert _depth(app) == 0


def test_enqueue_many_is_one_batch(app: Conveyor) -> None:
    @app.task
    def f(i: int) -> int:
        return i

    jobs = app.enqueue_many([f.s(i) for i in range(5)])
    assert len({j.id for j in jobs}) == 5
    assert _depth(app) == 5


def test_bad_input_in_a_batch_writes_nothing(app: Conveyor) -> None:
    @app.task
    def f(x: object) -> None: ...

    f.delay(1)
    with pytest.raises(SerializationError):
        app.enqueue_many([f.s(1), f.s(object())])
    with pytest.raises(InvalidName):
        f.options(queue="a:b*").delay(1)
    with pytest.raises(PayloadTooLarge):
        f.delay("x" * 2_000_000)
    with pytest.raises(InvalidName):
        f.options(job_id="has space").delay(1)
    for last_newline in ({"queue": "emails\n"}, {"job_id": "order-42\n"}):
        with pytest.raises(InvalidName):  # on a queue no worker reads, a job id not found
            f.options(**last_newline).delay(1)
    assert _depth(app) == 1  # only the first, good job


@pytest.mark.parametrize(
    "options",
    [
        {"retries": -1},
        {"priority": 10},
        {"timeout": 0},
        {"delay": "soon"},
        {"colour": "red"},
        {"retry_on": [42]},
        {"eta": dt.datetime(2030, 1, 1)},
    ],
)
def test_bad_options_are_configuration_errors(app: Conveyor, options: dict[str, object]) -> None:
    @app.task
    def f() -> None: ...

    with pytest.raises((ConfigurationError, InvalidName)):
        f.options(**options)


def test_unique_key_returns_the_pending_job(app: Conveyor) -> None:
    @app.task
    def report(day: str) -> None: ...

    first = report.options(key="report:2026-11-27").delay("2026-11-27")
    second = report.options(key="report:2026-11-27").delay("2026-11-27")
    assert first.id == second.id
    assert _depth(app) == 1


def test_app_job_handle(app: Conveyor) -> None:
    @app.task
    def f() -> None: ...

    job = f.delay()
    assert app.job(job.id) == job
    with pytest.raises(JobNotFound):
        app.job("nope")
    with pytest.raises(InvalidName):
        app.job("../etc/passwd")


def test_two_functions_with_one_name_are_refused(app: Conveyor) -> None:
    @app.task(name="dup")
    def a() -> None: ...

    with pytest.raises(ConfigurationError, match="name"):

        @app.task(name="dup")
        def b() -> None: ...


def test_apps_do_not_share_tasks() -> None:
    one, two = Conveyor("memory://"), Conveyor("memory://")

    @one.task
    def f() -> None: ...

    assert f.name in one.registry and f.name not in two.registry


async def test_async_producer_path(app: Conveyor) -> None:
    @app.task
    def f(x: int) -> int:
        return x

    job = await f.delay_async(1)
    job2 = await app.enqueue_async(os.path.join, "a")
    jobs = await app.enqueue_many_async([f.s(2), f.s(3)])
    assert job.status is JobStatus.QUEUED and job2.status is JobStatus.QUEUED
    assert len(jobs) == 2
    async with Conveyor("memory://") as other:
        assert other.url == "memory://"


def test_an_app_on_redis_imports_its_adapter_when_made_and_opens_nothing() -> None:
    # In a fresh interpreter: the first job must not pay for importing redis-py (~55 ms),
    # and making the app connects nowhere (port 1 has no server).
    code = (
        "import sys\n"
        "from conveyor import Conveyor\n"
        "assert 'redis' not in sys.modules\n"
        "app = Conveyor('redis://127.0.0.1:1/0')\n"
        "assert 'conveyor.brokers.redis' in sys.modules and app._broker is None\n"
        "Conveyor('memory://')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
