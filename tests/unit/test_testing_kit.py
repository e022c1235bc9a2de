"""``conveyor.testing``: what users write their own tests with. ``drain`` runs everything
there is to run, moves a ``FakeClock`` instead of sleeping, and never hangs."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import (
    ConfigurationError,
    Conveyor,
    DependencyFailed,
    JobNotFound,
    JobStatus,
    TaskFailed,
    chain,
    chord,
    group,
)
from conveyor._backoff import RANDOM
from conveyor.testing import DrainIncomplete, FakeClock, drain, use_memory


def flaky_resize(app: Conveyor, failures: int) -> object:
    """A task with ``retries=3`` that fails ``failures`` times, then succeeds."""
    calls = itertools.count(1)

    @app.task(retries=3)
    def resize(path: str, width: int) -> str:
        if next(calls) <= failures:
            raise ConnectionError("storage is busy")
        return f"{path}@{width}"

    return resize


# -- the README's first test ---------------------------------------------------------------


def test_retries_run_on_the_fake_clock_without_sleeping() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)
    resize = flaky_resize(app, failures=2)
    start, began = clock.time(), time.monotonic()

    job = resize.delay("a.png", 640)  # type: ignore[attr-defined]
    report = drain(app)

    assert job.result() == "a.png@640"
    assert report.ran == 3  # two failed attempts and the one that succeeded
    assert report.waited == 0.0
    assert 0 < report.advanced == pytest.approx(clock.time() - start)
    assert report.advanced < 1 + 2  # full-jitter backoff: below 1 s, then below 2 s
    # No real sleep: report.waited above is drain's own account of it (a stopwatch cannot
    # tell these < 3 s of backoff from a loaded machine); this only bounds a hang.
    assert time.monotonic() - began < 30


@pytest.mark.timeout(20)
def test_retries_on_a_real_clock_wait_real_time_within_the_bound() -> None:
    app = Conveyor("memory://")
    resize = flaky_resize(app, failures=2)

    job = resize.delay("a.png", 640)  # type: ignore[attr-defined]
    report = drain(app)

    assert job.result(timeout=30) == "a.png@640"
    assert report.ran == 3
    assert report.advanced == 0.0
    assert 0 < report.waited < 3 + 1


def test_a_real_clock_backoff_past_the_bound_fails_at_once_and_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Conveyor("memory://")

    @app.task(retries=3, backoff=600)
    def fetch() -> None:
        raise ConnectionError("down")

    # The retry's delay is drawn from [0, 600 s) (full jitter): one in five draws is within
    # the 120 s bound, which the drain then rightly waits for. The middle of the range is
    # past it every time.
    monkeypatch.setattr(RANDOM, "random", lambda: 0.5)  # Conveyor's own generator
    job = fetch.delay()
    began = time.monotonic()
    with pytest.raises(DrainIncomplete) as info:
        drain(app, timeout=120)
    # it did not wait for a job it cannot reach (waiting would take the whole 120 s bound)
    assert time.monotonic() - began < 60
    message = str(info.value)
    assert "FakeClock" in message and "timeout=" in message and "advance=False" in message
    assert "1 scheduled" in message
    assert job.status is JobStatus.SCHEDULED


# -- what is left, and when --------------------------------------------------------------------


def test_advance_false_runs_what_is_due_and_reports_the_rest() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(queue="other")
    def boom() -> None:
        raise ValueError("no")

    ok, bad = add.delay(1, 2), boom.delay()
    later = add.options(delay=60).delay(2, 2)
    report = drain(app, advance=False)
    assert (report.ran, report.scheduled, report.next_eta) == (2, 1, clock.time() + 60)
    assert ok.result() == 3
    with pytest.raises(TaskFailed, match="ValueError: no"):
        bad.result()
    assert later.status is JobStatus.SCHEDULED

    report = drain(app)
    assert (report.ran, report.scheduled, report.advanced) == (1, 0, 60.0)
    assert later.result() == 4


def test_delayed_and_eta_jobs_run_in_time_order_and_the_clock_stops_at_the_last() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)
    seen: list[tuple[str, float]] = []

    @app.task
    def note(name: str) -> None:
        seen.append((name, clock.time()))

    start = clock.time()
    note.options(delay=dt.timedelta(hours=2)).delay("two hours")
    note.options(eta=dt.datetime.fromtimestamp(start + 30, dt.UTC)).delay("eta")
    note.delay("now")
    assert drain(app).ran == 3
    assert seen == [("now", start), ("eta", start + 30), ("two hours", start + 7200)]
    assert clock.time() == start + 7200


def test_drain_with_nothing_to_do_returns_at_once() -> None:
    report = drain(Conveyor("memory://"), ["default"], timeout=5)
    assert (report.ran, report.rounds, report.scheduled) == (0, 1, 0)


def test_rate_limited_jobs_drain_completely_on_the_fake_clock() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task(rate="2/m")
    def ping(i: int) -> int:
        return i

    jobs = [ping.delay(i) for i in range(6)]
    report = drain(app)
    assert sorted(j.result() for j in jobs) == list(range(6))
    assert report.advanced >= 60  # two per minute: the last pair waits for the third minute


# -- periodic jobs ----------------------------------------------------------------------------


def test_periodic_ticks_run_when_the_clock_reaches_them() -> None:
    clock = FakeClock(1_800_000_000.0)  # a multiple of 60: a tick is due right now
    app = Conveyor("memory://", clock=clock)
    runs: list[float] = []

    @app.periodic(every=60)
    def beat() -> None:
        runs.append(clock.time())

    assert drain(app).ran == 0  # a schedule's first look starts it: nothing from the past
    clock.advance(60)
    assert drain(app).ran == 1
    clock.advance(59)
    assert drain(app).ran == 0
    assert runs == [1_800_000_060.0]


def test_until_walks_through_every_periodic_tick_and_retry() -> None:
    clock = FakeClock(1_800_000_000.0)
    app = Conveyor("memory://", clock=clock)
    runs: list[float] = []
    attempts = itertools.count()

    @app.periodic(cron="0 * * * *", retries=2)
    def hourly() -> None:
        if next(attempts) % 2 == 0:
            raise ConnectionError("every first attempt fails")
        runs.append(clock.time())

    end = dt.datetime.fromtimestamp(1_800_000_000 + 5 * 3600 + 1800, dt.UTC)
    report = drain(app, until=end)

    assert clock.time() == end.timestamp()
    assert len(runs) == 5  # one per hour (the start's own tick is not run), each after a retry
    assert all(0 < r % 3600 < 2 for r in runs)  # its retry ran within the backoff after the hour
    assert report.ran == 10
    assert report.scheduled == 0


def test_until_leaves_jobs_due_after_it_and_says_so() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task
    def later() -> None: ...

    start = clock.time()
    job = later.options(delay=100).delay()
    report = drain(app, until=start + 50)
    assert (report.ran, report.scheduled, report.next_eta) == (0, 1, start + 100)
    assert clock.time() == start + 50
    assert job.status is JobStatus.SCHEDULED


def test_until_out_of_rounds_counts_the_periodic_ticks_it_stops_at() -> None:
    # Eight days of a minutely schedule are 11,520 stops: the message blamed jobs that
    # keep failing and retrying, and did not say what max_rounds would do.
    clock = FakeClock(1_800_000_000.0)
    app = Conveyor("memory://", clock=clock)

    @app.periodic(every=60)
    def beat() -> None: ...

    drain(app)
    with pytest.raises(DrainIncomplete) as info:
        drain(app, until=clock.time() + 8 * 86400, max_rounds=20)
    message = str(info.value)
    assert "until= stops the clock at every periodic tick" in message
    assert "about 11,500 are left before until" in message
    assert "beat every=60 s: 11,500" in message
    assert "max_rounds=N) with N over 11,520" in message
    assert "failing and retrying" not in message

    @app.task
    def poll() -> None:  # rounds that go to a job rescheduling itself, not to the ticks
        poll.options(delay=1).delay()

    poll.delay()
    with pytest.raises(DrainIncomplete, match="jobs keep coming due"):
        drain(app, until=clock.time() + 86400, max_rounds=20)


@pytest.mark.parametrize(
    ("kwargs", "clock", "match"),
    [
        ({"until": dt.datetime(2030, 1, 1)}, True, "no time zone"),
        ({"until": 2e9}, False, "needs a FakeClock"),
        ({"until": 1.0}, True, "before the clock"),
        ({"until": 2e9, "advance": False}, True, "not both"),
        ({"until": "tomorrow"}, True, "epoch seconds"),
        ({"max_jobs": 0}, True, "max_jobs must be a positive integer"),
        ({"max_rounds": 1.5}, True, "max_rounds must be"),
        ({"timeout": 0}, True, "timeout must be"),
    ],
)
def test_bad_arguments_are_configuration_errors(
    kwargs: dict[str, object], clock: bool, match: str
) -> None:
    app = Conveyor("memory://", clock=FakeClock() if clock else None)
    with pytest.raises(ConfigurationError, match=match):
        drain(app, **kwargs)  # type: ignore[arg-type]


# -- workflows and dependencies ---------------------------------------------------------------


def test_workflows_with_retries_and_delays_drain_completely() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)
    calls = itertools.count()

    @app.task(retries=2)
    def add(a: int, b: int) -> int:
        if next(calls) % 3 == 0:
            raise ConnectionError("every third call fails once")
        return a + b

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    flow = chain(add.s(1, 2), add.s(10), add.s(100)).delay()
    summed = chord(group(add.s(i, 1) for i in range(4)), total.s()).delay()
    delayed = group(add.options(delay=30).s(i, i) for i in range(3)).delay()
    first = add.delay(5, 5)
    after = total.options(depends_on=[first, flow]).delay([1, 2])

    report = drain(app)
    assert flow.result() == 113
    assert summed.result() == 10
    assert delayed.result() == [0, 2, 4]
    assert after.result() == 3
    assert report.scheduled == 0 and report.advanced >= 30


def test_a_failed_dependency_fails_its_dependent_in_the_same_drain() -> None:
    app = Conveyor("memory://", clock=FakeClock())

    @app.task(retries=1)
    def broken() -> None:
        raise ValueError("always")

    @app.task
    def report() -> str:
        return "done"

    dep = broken.delay()
    job = report.options(depends_on=[dep]).delay()
    assert drain(app).ran == 3  # two attempts of broken, then report, failed by its dependency
    with pytest.raises(DependencyFailed):
        job.result()


def test_a_drain_that_moves_the_clock_can_expire_the_results_it_made() -> None:
    # docs/testing.md, "Results can expire within a drain": what happens, and both ways out.
    app = Conveyor("memory://", clock=FakeClock())

    @app.task
    def reminder(user: str) -> str:
        return f"reminded {user}"

    @app.task
    def signup(user: str) -> str:
        reminder.options(delay=7 * 86400).delay(user)
        return f"welcome {user}"

    job = signup.delay("ann")
    drain(app)  # a week later, past signup's result_ttl of a day
    with pytest.raises(JobNotFound):
        job.result()

    job = signup.delay("bob")
    drain(app, advance=False)
    assert job.result() == "welcome bob"
    drain(app)

    job = signup.options(result_ttl=30 * 86400).delay("cy")
    drain(app)
    assert job.result() == "welcome cy"


# -- the bounds: never a hang, never a silent partial drain -------------------------------


def test_a_job_that_enqueues_itself_forever_stops_at_max_jobs() -> None:
    app = Conveyor("memory://", clock=FakeClock())

    @app.task
    def again(n: int) -> None:
        again.delay(n + 1)

    again.delay(0)
    with pytest.raises(DrainIncomplete, match=r"over max_jobs=50 .*drain\(app, max_jobs=N\)"):
        drain(app, max_jobs=50)


def test_a_job_that_reschedules_itself_forever_stops_at_max_rounds() -> None:
    app = Conveyor("memory://", clock=FakeClock())

    @app.task
    def poll() -> None:
        poll.options(delay=10).delay()

    poll.delay()
    with pytest.raises(DrainIncomplete) as info:
        drain(app, max_rounds=20)
    message = str(info.value)
    assert "max_rounds=20" in message and "1 scheduled" in message
    assert "until=" in message


@pytest.mark.timeout(40)
def test_a_stuck_job_stops_at_the_wall_clock_bound() -> None:
    app = Conveyor("memory://", clock=FakeClock())

    @app.task
    def stuck() -> None:
        time.sleep(30)

    stuck.delay()
    began = time.monotonic()
    with pytest.raises(DrainIncomplete, match=r"timeout=0.5 s.*1 queued"):
        drain(app, timeout=0.5)
    assert time.monotonic() - began < 15  # not the job's 30 s; it was handed back, queued


@pytest.mark.timeout(30)
def test_a_stuck_job_with_a_time_limit_on_a_fake_clock_is_named() -> None:
    # A time limit is read on app.clock, which a drain does not move while a job runs: the
    # hung call that fails in production stalled the drain with no word about why.
    app = Conveyor("memory://", clock=FakeClock())
    release = threading.Event()

    @app.task(timeout=0.5)
    def hung() -> None:
        while not release.wait(0.01):  # a call that never answers
            pass

    job = hung.delay()
    try:
        with pytest.raises(DrainIncomplete) as info:
            drain(app, timeout=0.5)
    finally:
        release.set()
    message = str(info.value)
    assert "the time limit of " in message and "hung (timeout=0.5 s)" in message
    assert "is on the FakeClock" in message and "it will not fire" in message
    assert "clock.advance(seconds)" in message
    assert job.status is JobStatus.QUEUED


@pytest.mark.timeout(30)
def test_a_time_limit_fires_when_the_mocked_slow_call_moves_the_fake_clock() -> None:
    # docs/testing.md's recipe for testing a time limit on a FakeClock.
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    def hangs() -> None:  # the slow call, mocked: it moves the clock past the limit
        clock.advance(11)  # (not past the worker's 30 s lease, on the same clock)
        while True:
            time.sleep(0.01)

    @app.task(timeout=10)
    def fetch_report() -> None:
        hangs()

    job = fetch_report.delay()
    drain(app)
    with pytest.raises(TaskFailed, match="time limit of 10"):
        job.result()


def test_jobs_waiting_for_a_queue_not_drained_are_reported() -> None:
    app = Conveyor("memory://", clock=FakeClock())

    @app.task(queue="slow")
    def first() -> int:
        return 1

    @app.task
    def second() -> int:
        return 2

    dep = first.delay()
    job = second.options(depends_on=[dep]).delay()
    with pytest.raises(DrainIncomplete, match=r"wait for jobs that have not ended"):
        drain(app, ["default"])
    assert drain(app).ran == 2
    assert job.result() == 2


def test_jobs_waiting_for_a_paused_queue_say_to_resume_it() -> None:
    app = Conveyor("memory://", clock=FakeClock())

    @app.task(queue="emails")
    def send() -> int:
        return 1

    @app.task
    def after() -> int:
        return 2

    app.pause("emails")
    job = after.options(depends_on=[send.delay()]).delay()
    with pytest.raises(DrainIncomplete) as info:
        drain(app)
    message = str(info.value)
    assert "resume the paused queue(s) emails" in message
    assert "app.resume('emails')" in message
    assert "without queues=" not in message  # that is what was called
    app.resume("emails")
    assert drain(app).ran == 2
    assert job.result() == 2


# -- other brokers -----------------------------------------------------------------------------


def test_on_sqlite_a_fake_clock_cannot_be_moved_to_unknown_etas(tmp_path: Path) -> None:
    clock = FakeClock()
    with Conveyor(f"sqlite:///{tmp_path}/jobs.db", clock=clock) as app:

        @app.task
        def later() -> int:
            return 7

        job = later.options(delay=60).delay()
        with pytest.raises(DrainIncomplete, match=r"clock.advance\(seconds\)"):
            drain(app)
        clock.advance(60)
        assert drain(app).ran == 1
        assert job.result() == 7


@pytest.mark.timeout(20)
def test_on_sqlite_a_real_clock_drain_polls_for_a_short_delay(tmp_path: Path) -> None:
    with Conveyor(f"sqlite:///{tmp_path}/jobs.db") as app:

        @app.task
        def later() -> int:
            return 7

        job = later.options(delay=0.3).delay()
        report = drain(app)
        assert job.result(timeout=30) == 7
        assert report.ran == 1 and report.waited > 0


# -- use_memory -------------------------------------------------------------------------------


def test_use_memory_runs_an_apps_own_tasks_and_gives_its_broker_back(tmp_path: Path) -> None:
    database = tmp_path / "prod.db"
    app = Conveyor(f"sqlite:///{database}")

    @app.task(retries=1)
    def greet(name: str) -> str:
        return f"hello {name}"

    clock = FakeClock()
    with use_memory(app, clock) as same:
        assert same is app and app.clock is clock
        assert app.broker.url == "memory://"
        job = greet.delay("ada")
        drain(app)
        assert job.result() == "hello ada"
    assert app.clock is not clock
    with use_memory(app):
        assert app.broker.stats() == []  # each block starts empty
    assert not database.exists()  # its own broker was never opened
    assert app.broker.url.startswith("sqlite://")
    app.close()


@pytest.mark.parametrize("closing", ["close", "aclose"])
def test_closing_the_app_inside_use_memory_keeps_the_memory_broker(
    tmp_path: Path, closing: str
) -> None:
    # A web app's shutdown hook run by the test client closed the app: the next job opened
    # the app's own broker (production's file or Redis), ran there on the FakeClock, and
    # that broker was never closed.
    database = tmp_path / "prod.db"
    app = Conveyor(f"sqlite:///{database}")

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with use_memory(app, FakeClock()):
        memory = app.broker
        first = add.delay(1, 2)
        if closing == "close":
            app.close()
        else:
            asyncio.run(app.aclose())
        second = add.delay(2, 2)
        assert drain(app).ran == 2
        assert app.broker is memory
        assert (first.result(), second.result()) == (3, 4)
    assert not database.exists()  # its own broker was never opened
    assert app.broker.url.startswith("sqlite://")
    app.close()


def test_a_cached_function_uses_the_memory_broker_and_the_fake_clock(tmp_path: Path) -> None:
    # Decorated at import, with the app on its real broker: it opened that broker there and
    # kept it, so every test shared one cache, in the real file, on the real clock.
    database = tmp_path / "prod.db"
    app = Conveyor(f"sqlite:///{database}")
    computed: list[int] = []

    @app.cached(ttl=60)
    def rate(x: int) -> int:
        computed.append(x)
        return len(computed)

    assert not database.exists()  # decorating opens nothing
    for _ in range(2):  # two tests: each its own cache
        clock = FakeClock()
        with use_memory(app, clock):
            assert rate(1) == rate(1)
            clock.advance(3600)  # expired on the test's clock
            rate(1)
    assert computed == [1, 1, 1, 1]
    assert not database.exists()
    app.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda app: drain(app, "emails"), "queues takes a list of names"),
        (lambda app: drain(app, trust="reports"), "trust takes a list of names"),
        (lambda app: drain(app, until=float("inf")), "finite number"),
        (lambda app: drain(app, until=float("nan")), "finite number"),
        (lambda app: app.clock.advance(float("nan")), "finite number of seconds"),
        (lambda app: app.clock.set(float("inf")), "finite number of seconds"),
        (lambda app: app.clock.advance("60"), "finite number of seconds"),
    ],
)
def test_drain_and_the_fake_clock_refuse_what_they_would_misread(call: Any, message: str) -> None:
    # drain(app, "emails") drained queues e, m, a, i, l, s and ran nothing; until=inf moved
    # the clock to infinity and failed in the worker; until=nan ran to max_rounds.
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)

    @app.task(queue="emails")
    def send() -> None: ...

    job = send.delay()
    with pytest.raises(ConfigurationError, match=message):
        call(app)
    assert clock.time() == FakeClock().time()  # not moved
    assert job.status is JobStatus.QUEUED  # nothing lost either
    assert drain(app, ["emails"]).ran == 1
