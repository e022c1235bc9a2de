"""Periodic jobs on a fake clock: each tick once across schedulers, overlap, catch-up, restart."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conveyor import BrokerError, ConfigurationError, Conveyor, JobStatus
from conveyor._clock import FakeClock
from conveyor._message import JobStatus as Status
from conveyor._message import Outcome
from conveyor.brokers._port import Finish
from conveyor.brokers.memory import MemoryBroker
from conveyor.scheduler import CLAIM_TTL, Schedule, Scheduler

START = 1_699_999_200.0  # 2023-11-14 22:00:00 UTC, on the hour
QUEUED = (Status.QUEUED, Status.SCHEDULED, Status.RUNNING)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
def broker(clock: FakeClock) -> MemoryBroker:
    return MemoryBroker(clock)


@pytest.fixture
def app(clock: FakeClock, broker: MemoryBroker) -> Conveyor:
    return Conveyor("memory://", clock=clock, broker=broker)


def pending(app: Conveyor) -> int:
    return sum(s.queued + s.scheduled + s.running for s in app.broker.stats())


def run_all(app: Conveyor) -> list[str]:
    """Run every queued job (a stand-in for the worker): fetch, call, finish."""
    ran: list[str] = []
    codec = app.codec
    while deliveries := app.broker.fetch(["default"], "test", 10, 30, 0):
        for d in deliveries:
            msg = codec.decode_message(d.payload)
            value = app.registry[msg.task].fn(*msg.args, **msg.kwargs)
            result = codec.encode_outcome(Outcome(value=value))
            app.broker.finish([Finish(d, JobStatus.SUCCEEDED, result)])
            ran.append(d.id)
    return ran


def test_periodic_registers_the_task_and_its_schedule(app: Conveyor) -> None:
    @app.periodic(cron="*/5 * * * *", queue="default", retries=2)
    def cleanup() -> int:
        return 1

    @app.periodic(every=dt.timedelta(minutes=1), name="beat", overlap="allow", catch_up=3)
    def beat() -> None: ...

    assert cleanup() == 1  # still a plain callable
    assert app.registry[cleanup.name] is cleanup and cleanup.opts.retries == 2
    assert app.schedules == [
        Schedule(cleanup.name, cron="*/5 * * * *"),
        Schedule("beat", every=60.0, overlap="allow", catch_up=3),
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "every": 5}, "exactly one"),
        ({"cron": "* 25 * * *"}, "hour field"),
        ({"every": 0}, "every takes"),
        ({"every": "5m"}, "every takes"),
        ({"every": float("nan")}, "every takes a finite number"),
        ({"every": float("inf")}, "every takes a finite number"),
        ({"every": True}, "every takes seconds"),
        ({"every": dt.timedelta(0)}, "0.001 or more"),
        ({"cron": "@daily", "catch_up": True}, "catch_up"),
        ({"cron": "@daily", "overlap": "queue"}, "overlap"),
        ({"cron": "@daily", "catch_up": 0}, "catch_up"),
        ({"cron": "@daily", "key": "k"}, "key"),
        ({"cron": "@daily", "delay": 5}, "delay"),
        ({"cron": "@daily", "catch_up": 3}, "pass overlap='allow' with catch_up=3"),
    ],
)
def test_bad_schedule_is_refused_at_definition(
    app: Conveyor, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        app.periodic(**kwargs)(lambda: None)
    assert app.schedules == []


@pytest.mark.parametrize("ms", [2010, 1005, 4030])
def test_every_ticks_on_whole_multiples_of_its_interval(ms: int) -> None:
    """2.01 s is 2,010 ms (2.01 * 1000 is 2009.99...): the ticks fall on its multiples."""
    s = Schedule("s", every=ms / 1000)
    assert [round(s.next_after((ms * k + 0.5) / 1000) * 1000) for k in range(4)] == [
        ms * k for k in range(1, 5)
    ]


def test_a_schedule_name_is_unique(app: Conveyor) -> None:
    app.periodic(cron="@daily", name="x")(lambda: None)
    with pytest.raises(ConfigurationError, match="already exists"):
        app.periodic(cron="@hourly", name="x")(lambda: None)


def test_each_tick_once_and_on_time(app: Conveyor, clock: FakeClock) -> None:
    @app.periodic(cron="*/5 * * * *")
    def job() -> str:
        return "done"

    sched = Scheduler(app)
    assert sched.tick() == []  # first start: nothing from the past
    clock.advance(299)
    assert sched.tick() == []
    clock.advance(1)  # 22:05:00
    (first,) = sched.tick()
    assert first.id.endswith(f".{int((START + 300) * 1000)}")
    assert sched.tick() == [] and sched.tick(clock.time() + 60) == []
    assert run_all(app) == [first.id] and first.result(timeout=0) == "done"
    clock.advance(300)
    (second,) = sched.tick()
    assert second.id != first.id


def test_many_schedulers_in_many_processes_enqueue_each_tick_once(
    broker: MemoryBroker, clock: FakeClock
) -> None:
    """Eight 'processes' (apps sharing one broker), each with a scheduler thread, tick
    together every 3 s for 20 minutes: exactly one job per fire time."""

    def make() -> Conveyor:
        app = Conveyor("memory://", clock=clock, broker=broker)
        app.periodic(cron="* * * * *", name="minutely", overlap="allow")(lambda: None)
        app.periodic(every=90, name="ninety", overlap="allow", catch_up=5)(lambda: None)
        return app

    schedulers = [Scheduler(make()) for _ in range(8)]
    created: list[str] = []
    with ThreadPoolExecutor(len(schedulers)) as pool:
        for _ in range(0, 20 * 60, 3):
            barrier = threading.Barrier(len(schedulers))

            def go(s: Scheduler, barrier: threading.Barrier = barrier) -> list[str]:
                barrier.wait()  # all tick at the same instant
                return [j.id for j in s.tick()]

            for ids in pool.map(go, schedulers):
                created.extend(ids)
            clock.advance(3)
    assert len(created) == len(set(created))
    # The first start is on the hour and runs nothing from the past: 19 minutes, 13 x 90 s.
    assert sum(".minutely." in i for i in created) == 19
    assert sum(".ninety." in i for i in created) == 13
    assert pending(schedulers[0].app) == len(created)


def test_overlap_skip_waits_for_the_previous_run(
    app: Conveyor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic(every=60, name="slow")(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(60)
    (first,) = sched.tick()
    clock.advance(60)
    with caplog.at_level(logging.INFO, "conveyor.scheduler"):
        assert sched.tick() == []  # the first run is still pending
    assert "still pending" in caplog.text
    assert pending(app) == 1
    run_all(app)
    clock.advance(60)
    (third,) = sched.tick()
    assert third.id != first.id


def test_overlap_allow_runs_ticks_side_by_side(app: Conveyor, clock: FakeClock) -> None:
    app.periodic(every=60, name="fast", overlap="allow")(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    for _ in range(3):
        clock.advance(60)
        assert len(sched.tick()) == 1
    assert pending(app) == 3


def test_catch_up_after_downtime_is_bounded(
    app: Conveyor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic(every=60, name="every", overlap="allow", catch_up=3)(lambda: None)
    app.periodic(cron="*/10 * * * *", name="cron", overlap="allow", catch_up=2)(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(3600 + 30)  # down for an hour
    with caplog.at_level(logging.WARNING, "conveyor.scheduler"):
        jobs = sched.tick()
    every = sorted(int(j.id.rsplit(".", 1)[1]) for j in jobs if ".every." in j.id)
    now_ms = int(clock.time() * 1000)
    assert every == [now_ms - 30_000 - 120_000, now_ms - 30_000 - 60_000, now_ms - 30_000]
    assert sum(".cron." in j.id for j in jobs) == 2
    assert "missed 57 tick(s)" in caplog.text  # 60 due, 3 run
    assert "missed 4 tick(s)" in caplog.text  # 6 due, 2 run


def test_long_downtime_of_a_frequent_cron_is_cheap(app: Conveyor, clock: FakeClock) -> None:
    app.periodic(cron="* * * * *", name="m")(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(3 * 365 * 86400)  # three years, 1.5 million missed minutes
    (job,) = sched.tick()
    assert job.id.endswith(f".{int(clock.time() // 60 * 60_000)}")


def test_a_restarted_scheduler_resumes_where_it_was(app: Conveyor, clock: FakeClock) -> None:
    app.periodic(every=60, name="r", overlap="allow", catch_up=10)(lambda: None)
    Scheduler(app).tick()
    clock.advance(60)
    assert len(Scheduler(app).tick()) == 1
    assert Scheduler(app).tick() == []  # a fresh scheduler knows that tick was done
    clock.advance(180)
    assert len(Scheduler(app).tick()) == 3  # ... and which ones it missed


def test_a_failed_enqueue_is_retried_by_the_next_tick(
    app: Conveyor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.periodic(every=60, name="f")(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(60)
    real = app.broker.enqueue

    def down(envelopes: object, events: object = ()) -> list[str]:
        raise ConnectionError("broker down")

    monkeypatch.setattr(app.broker, "enqueue", down)
    with pytest.raises(ConnectionError):
        sched.tick()
    monkeypatch.setattr(app.broker, "enqueue", real)
    clock.advance(1)
    (job,) = Scheduler(app).tick()  # another scheduler can take the tick: the claim is gone
    assert job.id.endswith(f".{int((clock.time() - 1) * 1000)}")


def test_a_claim_whose_owner_died_expires(app: Conveyor, clock: FakeClock) -> None:
    schedule = Schedule("d", every=60.0, overlap="allow", catch_up=10)
    app.periodic(every=60, name="d", overlap="allow", catch_up=10)(lambda: None)
    Scheduler(app).tick()
    clock.advance(60)
    fire = int(clock.time() * 1000)
    app.broker.kv.set(f"conveyor:periodic:d:claim:{fire}", b"1", CLAIM_TTL, nx=True)  # died
    assert Scheduler(app).tick() == []
    clock.advance(CLAIM_TTL)
    ids = {j.id for j in Scheduler(app).tick()}
    assert schedule.job_id(fire) in ids


def test_next_after_and_job_ids_are_deterministic() -> None:
    s = Schedule("myapp.tasks:clean up!", every=300.0)
    assert s.next_after(START) == START + 300
    assert s.next_after(START + 1) == START + 300
    assert s.job_id(1) == Schedule("myapp.tasks:clean up!").job_id(1)
    assert s.job_id(1).startswith("periodic.myapp.tasks_clean_up_.")
    assert Schedule("a", cron="0 0 * * *").next_after(START) == 1_700_006_400.0


def test_run_ticks_in_a_thread_until_stopped(app: Conveyor, clock: FakeClock) -> None:
    app.periodic(every=1, name="bg", overlap="allow")(lambda: None)
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler(app).run, args=(stop, 0.01))
    thread.start()
    try:
        clock.advance(1)
        # fetch blocks on the broker's condition, no sleep loop, until the job arrives
        assert app.broker.fetch(["default"], "t", 1, 30, block=5.0)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_an_away_broker_is_one_warning_line_a_try_and_no_traceback(
    app: Conveyor, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No traceback a second while the broker is down: a warning per try, and the tries
    back off (from the interval, decorrelated), then tick again once it is back."""
    tries: list[float] = []
    back = threading.Event()

    def tick(self: Scheduler) -> list[Any]:
        tries.append(time.monotonic())
        if len(tries) < 5:
            raise BrokerError("connection refused")
        back.set()
        return []

    monkeypatch.setattr(Scheduler, "tick", tick)
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler(app).run, args=(stop, 0.02))
    with caplog.at_level(logging.DEBUG, logger="conveyor.scheduler"):
        thread.start()
        try:
            assert back.wait(30)
        finally:
            stop.set()
            thread.join(timeout=30)
    away = [r for r in caplog.records if "cannot reach the broker" in r.getMessage()]
    assert len(away) == 4 and all(r.exc_info is None and r.levelname == "WARNING" for r in away)
    assert "connection refused" in away[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


def test_each_tick_once_across_processes_sharing_a_sqlite_file(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Four apps, each with its own connection to one SQLite file (as separate worker
    processes would have), tick every 7 s of 20 minutes from four threads."""
    url = f"sqlite:///{tmp_path / 'c.db'}"

    def make() -> Scheduler:
        app = Conveyor(url, clock=clock)
        app.periodic(cron="*/2 * * * *", name="two", overlap="allow")(lambda: None)
        app.periodic(every=150, name="odd", overlap="allow")(lambda: None)
        app.broker.stats()  # open the file here: concurrent first opens can fail (reported)
        return Scheduler(app)

    schedulers = [make() for _ in range(4)]
    created: list[str] = []
    for _ in range(0, 20 * 60, 7):
        with ThreadPoolExecutor(len(schedulers)) as pool:
            for jobs in pool.map(lambda s: s.tick(), schedulers):
                created.extend(j.id for j in jobs)
        clock.advance(7)
    assert len(created) == len(set(created))
    assert sum(".two." in i for i in created) == 9  # 22:02 ... 22:18 (22:20 is not reached)
    assert sum(".odd." in i for i in created) == 7
    assert pending(schedulers[0].app) == len(created)
    for s in schedulers:
        s.app.close()


def test_a_schedule_whose_job_cannot_be_built_does_not_cost_the_others_their_ticks(
    app: Conveyor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from conveyor import InvalidName

    app.periodic(every=60, name="billing", overlap="allow")(lambda: None)
    app.periodic(every=60, name="tenant_sync", rate="1/s", rate_key="tenant:bad")(lambda: None)
    app.periodic(every=60, name="reports", overlap="allow")(lambda: None)
    refused = {"tenant:bad"}

    def check_text(text: str, what: str) -> str:
        if text in refused:
            raise InvalidName(f"{what} {text!r} holds characters the store cannot store")
        return text

    monkeypatch.setattr(app.broker.kv, "check_text", check_text)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(60)
    fire = int(clock.time() * 1000)
    with caplog.at_level(logging.ERROR, logger="conveyor.scheduler"):
        jobs = sched.tick()
    assert {j.id for j in jobs} == {
        Schedule("billing", every=60.0, overlap="allow").job_id(fire),
        Schedule("reports", every=60.0, overlap="allow").job_id(fire),
    }
    assert any("tenant_sync" in r.getMessage() for r in caplog.records)
    # Its tick stays claimed, so no other scheduler tries (and logs) it again, until just
    # before its next tick, which may retry it (catch_up).
    claim = f"conveyor:periodic:tenant_sync:claim:{fire}"
    assert 0 < (app.broker.kv.ttl(claim) or 0) < 60
    assert sched.tick() == []  # the others' ticks are done; the bad one waits for its next
    refused.clear()  # fixed (say, the store now holds it): its next tick runs
    clock.advance(60)
    assert {j.id.split(".")[1] for j in sched.tick()} == {"billing", "tenant_sync", "reports"}


def test_a_store_failure_while_planning_releases_the_ticks_already_claimed(
    app: Conveyor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails (adapters raise a BrokerError: redis.* and sqlite3.* never leak) while
    a later schedule is planned: the tick stops, and the next one enqueues both."""
    from conveyor import BrokerUnavailable

    app.periodic(every=60, name="first")(lambda: None)
    app.periodic(every=60, name="second")(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(60)
    real = app.broker.kv.get

    def get(key: str) -> bytes | None:
        if key == "conveyor:periodic:second:last":
            raise BrokerUnavailable("store down")
        return real(key)

    monkeypatch.setattr(app.broker.kv, "get", get)
    with pytest.raises(BrokerUnavailable):
        sched.tick()
    monkeypatch.setattr(app.broker.kv, "get", real)
    assert {j.id.split(".")[1] for j in sched.tick()} == {"first", "second"}


def test_a_rate_key_too_long_for_its_counters_is_refused_when_the_schedule_is_defined(
    app: Conveyor,
) -> None:
    from conveyor import InvalidName

    with pytest.raises(InvalidName, match="at most"):
        app.periodic(every=10, name="t", rate="1/s", rate_key="t" * 480)(lambda: None)
    assert app.schedules == []


def refuse_rate_key(monkeypatch: pytest.MonkeyPatch, broker: MemoryBroker, key: str) -> set[str]:
    """Make the store refuse ``key`` as a rate key (as a database whose encoding lacks one of
    its characters does); clear the returned set to accept it again."""
    from conveyor import InvalidName

    refused = {key}

    def check_text(text: str, what: str) -> str:
        if text in refused:
            raise InvalidName(f"{what} {text!r} holds characters the store cannot store")
        return text

    monkeypatch.setattr(broker.kv, "check_text", check_text)
    return refused


def test_the_middleware_hears_that_a_job_which_could_not_be_built_was_not_sent(
    clock: FakeClock, broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor import InvalidName, Middleware
    from conveyor.middleware import Message

    heard: dict[str, BaseException | None] = {}

    class Spy(Middleware):
        def after_enqueue(self, message: Message, error: BaseException | None) -> None:
            assert message.task not in heard, "after_enqueue called twice for one job"
            heard[message.task] = error

    app = Conveyor("memory://", clock=clock, broker=broker, middleware=[Spy()])
    app.periodic(every=60, name="good", overlap="allow")(lambda: None)
    app.periodic(every=60, name="bad", rate="1/s", rate_key="tenant:bad")(lambda: None)
    refuse_rate_key(monkeypatch, broker, "tenant:bad")
    sched = Scheduler(app)
    sched.tick()
    clock.advance(60)
    (job,) = sched.tick()
    assert ".good." in job.id
    assert heard["good"] is None
    assert isinstance(heard["bad"], InvalidName)


def test_a_store_failure_between_the_claims_of_one_schedule_releases_those_made(
    app: Conveyor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor import BrokerUnavailable

    app.periodic(every=60, name="s", catch_up=2, overlap="allow")(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(120)  # two ticks due
    real = app.broker.kv.set
    claims = 0

    def flaky(key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        nonlocal claims
        if ":claim:" in key:
            claims += 1
            if claims == 2:
                raise BrokerUnavailable("store blip")
        return real(key, value, ttl, nx=nx)

    monkeypatch.setattr(app.broker.kv, "set", flaky)
    with pytest.raises(BrokerUnavailable):
        sched.tick()
    monkeypatch.setattr(app.broker.kv, "set", real)
    clock.advance(1)
    fires = [_ms_of(START + 60), _ms_of(START + 120)]
    s = Schedule("s", every=60.0, overlap="allow", catch_up=2)
    assert [j.id for j in sched.tick()] == [s.job_id(f) for f in fires]


def _ms_of(seconds: float) -> int:
    return int(seconds * 1000)


def test_a_schedule_that_cannot_be_built_logs_once_per_tick_whatever_the_worker_count(
    broker: MemoryBroker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    refuse_rate_key(monkeypatch, broker, "tenant:bad")
    schedulers = []
    for _ in range(5):
        app = Conveyor("memory://", clock=clock, broker=broker)
        app.periodic(every=60, name="bad", rate="1/s", rate_key="tenant:bad")(lambda: None)
        schedulers.append(Scheduler(app))
    for s in schedulers:
        s.tick()
    levels = []
    for _ in range(3):
        clock.advance(60)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="conveyor.scheduler"):
            for s in schedulers:
                assert s.tick() == []
        levels += [r.levelname for r in caplog.records]
    # One record a tick across the workers (at ERROR the first time: the same error is not
    # told again so soon), and no "missed ticks" warning: a failed tick that catch_up leaves
    # behind was tried, not missed. The latest one stays due (retried).
    assert levels == ["ERROR", "DEBUG", "DEBUG"]
    assert broker.kv.get("conveyor:periodic:bad:last") == str(_ms_of(clock.time()) - 1).encode()


def test_a_failed_tick_is_run_at_the_next_one_if_catch_up_allows(
    app: Conveyor, broker: MemoryBroker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: dict[str, Any] = {"rate": "1/s", "rate_key": "tenant:x", "overlap": "allow"}
    app.periodic(every=60, name="s", catch_up=2, **options)(lambda: None)
    refused = refuse_rate_key(monkeypatch, broker, "tenant:x")
    other = Scheduler(Conveyor("memory://", clock=clock, broker=broker))
    other.app.periodic(every=60, name="s", catch_up=2, **options)(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    for _ in range(3):  # each tick retries the one before it, and fails again
        clock.advance(60)
        assert sched.tick() == [] and other.tick() == []
    refused.clear()
    clock.advance(60)
    s = Schedule("s", every=60.0, overlap="allow", catch_up=2)
    now = _ms_of(clock.time())
    assert [j.id for j in other.tick() + sched.tick()] == [s.job_id(now - 60_000), s.job_id(now)]


def _count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, ``[n]``: how many steps cron schedules have walked (``_next_ms``)."""
    walked = [0]
    real = Schedule._next_ms

    def counting(self: Schedule, t: int) -> int:
        walked[0] += 1
        return real(self, t)

    monkeypatch.setattr(Schedule, "_next_ms", counting)
    return walked


def test_a_cron_schedule_that_keeps_failing_stays_cheap(
    app: Conveyor, broker: MemoryBroker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.periodic(cron="* * * * *", name="c", rate="1/s", rate_key="tenant:x")(lambda: None)
    refuse_rate_key(monkeypatch, broker, "tenant:x")
    sched = Scheduler(app)
    sched.tick()
    walked = _count_steps(monkeypatch)
    for _ in range(50):
        clock.advance(60)
        sched.tick()
    assert walked[0] < 50 * 6  # a few steps a tick, not a walk from the first failure


@pytest.fixture
def errors() -> Iterator[list[str]]:
    """The messages the scheduler logs at ERROR meanwhile (without caplog's cost a record)."""
    logged: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda r: logged.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("conveyor.scheduler").addHandler(handler)
    try:
        yield logged
    finally:
        logging.getLogger("conveyor.scheduler").removeHandler(handler)


def test_a_frequent_schedule_that_keeps_failing_logs_the_same_error_every_ten_minutes(
    app: Conveyor,
    broker: MemoryBroker,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    errors: list[str],
) -> None:
    app.periodic(every=1, name="s", rate="1/s", rate_key="tenant:x")(lambda: None)
    refused = refuse_rate_key(monkeypatch, broker, "tenant:x")
    sched = Scheduler(app)
    sched.tick()
    for _ in range(900):  # 15 minutes, a tick a second
        clock.advance(1)
        sched.tick()
    assert len(errors) == 2 and "599 more time(s)" in errors[1]
    refused.clear()
    clock.advance(1)
    assert len(sched.tick()) == 1  # fixed; should it fail again, it is logged at once
    refused.add("tenant:x")
    clock.advance(1)
    sched.tick()
    assert len(errors) == 3


def build_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.levelname for r in caplog.records if "cannot build" in r.getMessage()]


@pytest.mark.parametrize("catch_up", [1, 2])
def test_a_tick_that_failed_to_build_runs_soon_after_the_fix(
    broker: MemoryBroker,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    catch_up: int,
) -> None:
    """A daily report whose rate key the store refuses at 23:00 runs once the store takes it
    (at 23:09), as it would after workers that were down at 23:00 came back: not a day later
    (catch_up=2), not never (catch_up=1). Meanwhile the two workers, ticking every 20 s, try
    it about once a minute between them, and each logs it at ERROR once."""
    refused = refuse_rate_key(monkeypatch, broker, "tenant:x")
    options: dict[str, Any] = {"rate": "1/s", "rate_key": "tenant:x", "overlap": "allow"}
    workers = []
    for _ in range(2):
        app = Conveyor("memory://", clock=clock, broker=broker)
        app.periodic(cron="0 23 * * *", name="report", catch_up=catch_up, **options)(lambda: None)
        workers.append(Scheduler(app))
    enqueued: list[tuple[float, str]] = []
    with caplog.at_level(logging.DEBUG, logger="conveyor.scheduler"):
        while clock.time() < START + 3600 + 15 * 60:  # 22:00 to 23:15
            if clock.time() >= START + 3600 + 9 * 60:
                refused.clear()
            workers.reverse()  # now one, now the other ticks first
            for w in workers:
                enqueued += [(clock.time(), j.id) for j in w.tick()]
            clock.advance(20)
    at_23 = Schedule("report", cron="0 23 * * *").job_id(_ms_of(START + 3600))
    assert [i for _, i in enqueued] == [at_23]
    assert START + 3600 + 9 * 60 <= enqueued[0][0] <= START + 3600 + 10 * 60
    failed = build_failures(caplog)
    assert failed.count("ERROR") == 2 and 9 <= len(failed) <= 10


def test_a_failed_tick_is_retried_by_a_worker_that_did_not_build_it(
    broker: MemoryBroker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that failed to build the tick is stopped (a new release replaces it); the
    other one, which found the tick claimed, runs it once the store takes the rate key."""
    refused = refuse_rate_key(monkeypatch, broker, "tenant:x")
    workers = []
    for _ in range(2):
        app = Conveyor("memory://", clock=clock, broker=broker)
        app.periodic(cron="0 23 * * *", name="r", rate="1/s", rate_key="tenant:x")(lambda: None)
        workers.append(Scheduler(app))
    for w in workers:
        w.tick()
    clock.advance(3600)  # 23:00
    assert workers[0].tick() == [] and workers[1].tick() == []  # failed; claimed
    refused.clear()
    jobs = []
    for _ in range(12):  # only the second worker ticks on, every 10 s
        clock.advance(10)
        jobs += workers[1].tick()
    assert [j.id for j in jobs] == [Schedule("r", cron="0 23 * * *").job_id(_ms_of(START + 3600))]


def test_a_build_error_that_comes_back_after_another_worker_built_the_job_is_logged_again(
    broker: MemoryBroker,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = refuse_rate_key(monkeypatch, broker, "tenant:x")
    options: dict[str, Any] = {"overlap": "allow", "rate": "1/s", "rate_key": "tenant:x"}
    a, b = (Scheduler(Conveyor("memory://", clock=clock, broker=broker)) for _ in range(2))
    for s in (a, b):
        s.app.periodic(every=60, name="sync", **options)(lambda: None)
        s.tick()
    levels = []
    for fails, first, second in [(True, a, b), (False, b, a), (False, b, a), (True, a, b)]:
        refused.clear()
        if fails:
            refused.add("tenant:x")
        clock.advance(60)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="conveyor.scheduler"):
            built = len(first.tick()) + len(second.tick())
        levels.append(build_failures(caplog) or built)
    # The second worker built the job twice between the first worker's two failures: the
    # error is back, a new episode, and the first worker logs it at ERROR again.
    assert levels == [["ERROR"], 1, 1, ["ERROR"]]


def test_a_new_build_error_is_logged_without_the_count_of_the_previous_one(
    app: Conveyor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, errors: list[str]
) -> None:
    from conveyor import InvalidName

    error = {"text": "error one"}

    def check_text(text: str, what: str) -> str:
        raise InvalidName(error["text"])

    monkeypatch.setattr(app.broker.kv, "check_text", check_text)
    app.periodic(every=60, name="s", rate="1/s", rate_key="tenant:x")(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    for text in ["error one"] * 3 + ["error two"]:
        error["text"] = text
        clock.advance(60)
        sched.tick()
    assert [e.rsplit(": ", 1)[1] for e in errors] == ["error one", "error two"]
    assert "more time(s)" not in errors[1]  # error one recurred twice, error two did not


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("n" * 475, "at most 474 characters, this one has 475"),
        ("billing\tnightly", "without control characters"),
        ("bad\x00name", "without control characters"),
    ],
)
def test_a_schedule_name_the_store_cannot_hold_is_refused_at_definition(
    app: Conveyor, name: str, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        app.periodic(every=60, name=name)(lambda: None)
    assert app.schedules == [] and name not in app.registry
    app.periodic(every=60, name="n" * 474)(lambda: None)  # the longest the keys can hold


def test_a_schedule_that_cannot_be_planned_does_not_cost_the_others_their_ticks(
    app: Conveyor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A schedule whose keys the store refuses (put in app.schedules by hand, past the
    decorator's checks; or a name the database's encoding lacks) is logged and retried about
    once a minute; the other schedules' ticks are enqueued all the same."""
    app.periodic(every=1, name="before", overlap="allow")(lambda: None)
    app.schedules.append(Schedule("bad\tname", every=1.0))
    app.periodic(every=1, name="after", overlap="allow")(lambda: None)
    sched = Scheduler(app)
    with caplog.at_level(logging.ERROR, logger="conveyor.scheduler"):
        sched.tick()
        enqueued = []
        for _ in range(61):
            clock.advance(1)
            enqueued += [j.id.split(".")[1] for j in sched.tick()]
    assert enqueued == ["before", "after"] * 61
    planned = [r for r in caplog.records if "cannot plan" in r.getMessage()]
    assert len(planned) == 2  # at the first tick, then a minute later
    assert "bad\tname" in planned[0].getMessage() and "bad key" in planned[0].getMessage()


def test_a_periodic_task_that_requires_arguments_is_refused_at_definition(app: Conveyor) -> None:
    def sync_tenant(tenant: str) -> str:
        return tenant

    with pytest.raises(ConfigurationError, match=r"'sync'.* wrap the call in a function of no"):
        app.periodic(every=60, name="sync")(sync_tenant)  # type: ignore[arg-type]
    assert app.schedules == [] and "sync" not in app.registry

    def defaults(tenant: str = "all", *more: str, **extra: str) -> None: ...

    app.periodic(every=60, name="defaults")(defaults)  # callable with no arguments

    def with_db(fn: Any) -> Any:  # a decorator that supplies the argument itself
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn("db", *args, **kwargs)

        return wrapper

    @app.periodic(every=60, name="cleanup")
    @with_db
    def cleanup(db: str) -> str:
        return db

    assert cleanup() == "db"


def test_an_empty_schedule_name_is_refused_as_a_task_name_is(app: Conveyor) -> None:
    from conveyor import InvalidOption

    with pytest.raises(InvalidOption, match="non-empty str"):
        app.task(name="")(lambda: None)
    with pytest.raises(InvalidOption, match="non-empty str"):
        app.periodic(every=60, name="")(lambda: None)
    assert app.schedules == []


@pytest.mark.parametrize(("catch_up", "skipped"), [(5000, 0), (4320, 0), (3000, 1320), (1, None)])
def test_a_cron_catch_up_past_the_scan_limit_counts_what_it_skips(
    catch_up: int, skipped: int | None
) -> None:
    """4,320 minutes missed (three days), more than one walk from `last` takes: the count of
    skipped ticks is exact once a window reaches back to `last`, and "some" (None) only when
    catch_up is filled by a window that does not (not walked, to stay cheap)."""
    s = Schedule("m", cron="* * * * *", overlap="allow", catch_up=catch_up)
    last = _ms_of(START)
    run, count = s.due(last, last + 3 * 86_400_000)
    assert count == skipped
    assert run == [last + 60_000 * k for k in range(4321 - len(run), 4321)]
    assert len(run) == min(catch_up, 4320)


def test_a_cron_catch_up_that_runs_every_missed_tick_warns_of_none(
    app: Conveyor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic(cron="* * * * *", name="m", overlap="allow", catch_up=5000)(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(3 * 86400)
    with caplog.at_level(logging.WARNING, logger="conveyor.scheduler"):
        assert len(sched.tick()) == 4320
    assert "missed" not in caplog.text


def test_a_cron_catch_up_past_the_scan_limit_warns_of_what_it_skips(
    app: Conveyor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic(cron="* * * * *", name="m", overlap="allow", catch_up=3000)(lambda: None)
    sched = Scheduler(app)
    sched.tick()
    clock.advance(3 * 86400)
    with caplog.at_level(logging.WARNING, logger="conveyor.scheduler"):
        jobs = sched.tick()
    since, first_run = (
        dt.datetime.fromtimestamp(t, dt.UTC).isoformat() for t in (START, START + 1321 * 60)
    )
    assert len(jobs) == 3000
    assert f"missed 1320 tick(s) between {since} and {first_run}" in caplog.text


def test_a_long_cron_catch_up_walks_each_tick_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = Schedule("m", cron="* * * * *", overlap="allow", catch_up=5000)
    walked = _count_steps(monkeypatch)
    last = _ms_of(START)
    s.due(last, last + 3 * 86_400_000)
    # The first walk from `last` (2,000 ticks), then each of the 4,320 ticks once more.
    assert walked[0] < 2000 + 4320 + 20
