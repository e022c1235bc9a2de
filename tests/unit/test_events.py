"""Events from the public API and a real ``Worker``, on each embedded broker: what each state
change publishes (the schema of docs/observability.md, field by field), in what order, on
which calls, and nothing at all with ``events=False``."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import pytest

from brokers import params
from conveyor import (
    BrokerError,
    BrokerGone,
    ConfigurationError,
    Conveyor,
    Event,
    Job,
    JobStatus,
    TaskFailed,
    _events,
    chain,
)
from conveyor._backoff import Backoff
from conveyor._clock import FakeClock, SystemClock
from conveyor._events import check_types, parse_duration
from conveyor._message import Delivery, Envelope, Message
from conveyor.brokers._port import Finish
from conveyor.brokers.memory import MemoryBroker
from conveyor.cli.events import line
from conveyor.scheduler import Scheduler
from conveyor.worker import Worker
from conveyor.worker._attempt import Attempt
from conveyor.worker._events import WorkerEvents

from .test_worker import running

JOB_KEYS = {"type", "time", "job_id", "task", "queue"}


@pytest.fixture(params=params(embedded=True))
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    with Conveyor(request.param.target(request, tmp_path).url) as a:
        yield a


def everything(app: Conveyor) -> list[Event]:
    out: list[Event] = []
    after = None
    while page := app.read_events(after, limit=100):
        out += page
        after = page[-1].cursor
    return out


def of(events: Sequence[Event], job_id: str) -> list[Event]:
    return [e for e in events if e.job_id == job_id]


def keys(event: Event) -> set[str]:
    """The fields the event's JSON has, as published."""
    published = msgspec.structs.replace(event, cursor="")
    return set(msgspec.json.decode(msgspec.json.encode(published)))


def fails(app: Conveyor, job: Job[object]) -> None:
    """Run a worker until ``job`` has failed and said so."""
    with running(Worker(app)):
        with pytest.raises(TaskFailed):
            job.result(timeout=30)
        wait_for(app, "job.failed", job.id)


def wait_for(app: Conveyor, kind: str, job_id: str | None = None, timeout: float = 30.0) -> Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in everything(app):
            if e.type == kind and (job_id is None or e.job_id == job_id):
                return e
        time.sleep(0.01)
    raise AssertionError(f"no {kind} event for {job_id} within {timeout} s")


# -- a job's life --------------------------------------------------------------------------


def test_a_job_that_succeeds_is_enqueued_started_and_succeeded(app: Conveyor) -> None:
    @app.task(queue="maths", priority=3)
    def add(x: int, y: int) -> int:
        return x + y

    before = time.time()
    worker = Worker(app, ["maths"])
    with running(worker):
        job = add.delay(2, 3)
        assert job.result(timeout=30) == 5
        wait_for(app, "job.succeeded", job.id)
    enqueued, started, succeeded = of(everything(app), job.id)
    assert [e.type for e in (enqueued, started, succeeded)] == [
        "job.enqueued",
        "job.started",
        "job.succeeded",
    ]
    assert all(e.task == add.name and e.queue == "maths" for e in (enqueued, started, succeeded))
    assert before <= enqueued.time <= started.time <= succeeded.time <= time.time()
    assert keys(enqueued) == JOB_KEYS | {"priority"} and enqueued.priority == 3
    assert keys(started) == JOB_KEYS | {"worker_id", "attempt", "deliveries"}
    assert (started.worker_id, started.attempt, started.deliveries) == (worker.id, 0, 1)
    assert keys(succeeded) == JOB_KEYS | {"worker_id", "attempt", "duration"}
    assert succeeded.worker_id == worker.id and 0 <= (succeeded.duration or -1) < 30


def test_a_retried_job_that_fails_names_its_error_and_attempts(app: Conveyor) -> None:
    @app.task(retries=1, backoff=0.01)
    def boom() -> None:
        raise KeyError("nope")

    job = boom.delay()
    fails(app, job)
    types = [e.type for e in of(everything(app), job.id)]
    assert types == [
        "job.enqueued",
        "job.started",
        "job.retried",
        "job.started",
        "job.failed",
    ]
    _, first, retried, second, failed = of(everything(app), job.id)
    assert keys(retried) == JOB_KEYS | {"worker_id", "attempt", "duration", "error", "eta"}
    assert (retried.attempt, retried.error) == (0, "builtins.KeyError")
    assert retried.eta == pytest.approx(retried.time, abs=0.1)  # backoff=0.01: soon
    assert (first.attempt, second.attempt) == (0, 1)
    assert keys(failed) == JOB_KEYS | {"worker_id", "attempt", "duration", "error"}
    assert (failed.attempt, failed.error) == (1, "builtins.KeyError")


def test_a_dead_letter_says_why_even_when_its_task_is_unknown(app: Conveyor) -> None:
    garbage = Envelope("raw-job", "default", b"\x00 not a message")
    app.broker.enqueue([garbage])  # written by hand: no enqueued event

    @app.task
    def never() -> None: ...

    ghost = app.enqueue(print, "hi")  # a callable the worker does not trust
    with running(Worker(app)):
        wait_for(app, "job.dead", "raw-job")
        wait_for(app, "job.dead", ghost.id)
    raw = of(everything(app), "raw-job")
    assert [e.type for e in raw] == ["job.dead"]
    assert keys(raw[0]) == JOB_KEYS | {"worker_id", "reason", "deliveries"}
    assert raw[0].task == "" and "undecodable payload" in (raw[0].reason or "")
    (dead,) = [e for e in of(everything(app), ghost.id) if e.type == "job.dead"]
    assert dead.task == "builtins:print" and dead.attempt == 0 and "trust" in (dead.reason or "")


def test_cancel_publishes_for_a_pending_job_and_its_worker_for_a_running_one(
    app: Conveyor,
) -> None:
    started = threading.Event()

    @app.task
    def wait() -> None:
        started.set()
        for _ in range(500):  # short sleeps: the cancel reaches the thread between two
            time.sleep(0.01)

    @app.task
    def later() -> None: ...

    pending = app.options(delay=60).enqueue(later)
    assert pending.cancel()
    assert pending.cancel()  # again: nothing more to say
    worker = Worker(app, lease=0.6)
    with running(worker):
        job = wait.delay()
        assert started.wait(30)
        assert job.cancel()
        cancelled = wait_for(app, "job.cancelled", job.id)
    (by_app,) = of(everything(app), pending.id)[1:]
    assert by_app.type == "job.cancelled" and by_app.task == later.name
    assert keys(by_app) == JOB_KEYS | {"reason"} and by_app.reason == "cancelled before it ran"
    assert keys(cancelled) == JOB_KEYS | {"worker_id", "attempt", "duration", "reason"}
    assert cancelled.worker_id == worker.id and "cancel" in (cancelled.reason or "")


def test_requeue_publishes_each_job_put_back(app: Conveyor) -> None:
    @app.task
    def boom() -> None:
        raise ValueError("boom")

    job = boom.delay()
    fails(app, job)
    tail = app.broker.events_tail()
    assert app.requeue([job.id]) == 1
    (requeued,) = app.read_events(tail)
    assert (requeued.type, requeued.job_id, requeued.task) == ("job.requeued", job.id, boom.name)
    assert keys(requeued) == JOB_KEYS | {"reason"} and requeued.reason == "requeued"
    assert app.requeue_all(JobStatus.FAILED) == 0  # nothing more went back: nothing said
    assert app.read_events(requeued.cursor) == []


def test_a_rate_limited_job_is_requeued_until_its_turn(app: Conveyor) -> None:
    @app.task(rate="1/m")
    def limited(i: int) -> int:
        return i

    with running(Worker(app)):
        first, second = limited.delay(1), limited.delay(2)
        assert first.result(timeout=30) == 1
        back = wait_for(app, "job.requeued", second.id)
    assert keys(back) == JOB_KEYS | {"worker_id", "attempt", "eta", "reason"}
    assert back.reason == "rate limited" and (back.eta or 0) > back.time
    assert [e.type for e in of(everything(app), second.id)] == ["job.enqueued", "job.requeued"]


def test_a_stopping_worker_says_which_started_jobs_it_handed_back(app: Conveyor) -> None:
    started = threading.Event()

    @app.task
    def slow() -> None:
        started.set()
        time.sleep(3)

    worker = Worker(app, grace=0.0)
    with running(worker):
        job = slow.delay()
        assert started.wait(30)
    back = of(everything(app), job.id)[-1]
    assert (back.type, back.reason, back.worker_id) == (
        "job.requeued",
        "its worker stopped",
        worker.id,
    )


# -- workers -------------------------------------------------------------------------------


def test_a_worker_announces_itself_beats_and_says_goodbye(app: Conveyor) -> None:
    @app.task
    def noop() -> None: ...

    worker = Worker(app, ["default", "other"], concurrency=3)
    with running(worker):
        noop.delay().result(timeout=30)
        noop.delay().result(timeout=30)
        wait_for(app, "worker.heartbeat")
    mine = [e for e in everything(app) if e.worker_id == worker.id and e.job_id is None]
    online, beat, offline = mine[0], mine[1], mine[-1]
    assert [online.type, beat.type, offline.type] == [
        "worker.online",
        "worker.heartbeat",
        "worker.offline",
    ]
    assert keys(online) == {"type", "time", "worker_id", "host", "pid", "queues", "pool",
                            "concurrency"}  # fmt: skip
    assert (online.queues, online.pool, online.concurrency) == (["default", "other"], "threads", 3)
    assert keys(beat) == keys(offline) == {"type", "time", "worker_id", "processed"}
    assert offline.processed == 2


def test_a_long_jobs_start_is_published_before_it_ends(app: Conveyor) -> None:
    """Nothing finishes to carry it: it goes out on its own (within about FLUSH_AFTER),
    while the job still runs (it runs until released, 120 s at most)."""
    release = threading.Event()

    @app.task
    def long() -> None:
        release.wait(120)

    with running(Worker(app, concurrency=1)):
        job = long.delay()
        wait_for(app, "job.started", job.id, timeout=60)  # the job waits to be released
        assert app.job(job.id).status is JobStatus.RUNNING
        release.set()
        job.result(timeout=30)


class Counting(MemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        self.publishes = 0
        self.finishes = 0

    def publish(self, events: Sequence[bytes]) -> None:
        self.publishes += 1
        super().publish(events)

    def finish(self, outcomes: Sequence[Finish], events: Sequence[bytes] = ()) -> list[bool]:
        self.finishes += 1
        return super().finish(outcomes, events)


def test_a_busy_workers_events_ride_on_its_finish_calls() -> None:
    broker = Counting()
    app = Conveyor(broker=broker)

    @app.task
    def tiny(i: int) -> int:
        return i

    jobs = app.enqueue_many([tiny.s(i) for i in range(2000)])
    with running(Worker(app, concurrency=8)):
        assert jobs[-1].result(timeout=20) == 1999
        wait_for(app, "job.succeeded", jobs[-1].id)
    found = everything(app)
    assert sum(e.type == "job.started" for e in found) == 2000
    assert sum(e.type == "job.succeeded" for e in found) == 2000
    assert broker.publishes <= 10 < broker.finishes  # not one call per job, nor per batch


def test_each_jobs_events_are_in_the_order_they_happened(app: Conveyor) -> None:
    @app.task(retries=1, backoff=0.001)
    def flaky(i: int) -> int:
        if i % 3 == 0 and not flaky_seen.setdefault(i, False):
            flaky_seen[i] = True
            raise RuntimeError("once")
        return i

    flaky_seen: dict[int, bool] = {}
    jobs = app.enqueue_many([flaky.s(i) for i in range(300)])
    with running(Worker(app, concurrency=8)):
        for job in jobs:
            job.result(timeout=10)
        wait_for(app, "job.succeeded", jobs[-1].id)
    found = everything(app)
    for i, job in enumerate(jobs):
        types = [e.type for e in of(found, job.id)]
        once = ["job.enqueued", "job.started", "job.succeeded"]
        twice = ["job.enqueued", "job.started", "job.retried", "job.started", "job.succeeded"]
        assert types == (twice if i % 3 == 0 else once), (i, types)


# -- producers -----------------------------------------------------------------------------


@pytest.mark.parametrize("system", [True, False])
def test_a_workers_job_events_are_job_events_as_encoded_and_stamped_elsewhere(
    system: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker encodes and stamps them inline, and reads the system clock directly.
    now = 1_765_000_000.1234567
    monkeypatch.setattr(time, "time", lambda: now)
    clock = SystemClock() if system else FakeClock(now)
    events = WorkerEvents("w1", clock)
    message = Message(id="j1", task="m:f", queue="q", attempt=1)
    attempt = Attempt(Delivery("j1", "q", b"{}", "tok", 2))
    attempt.message = message
    attempt.began = time.monotonic() - 0.25
    events.started(attempt, wake=False)
    made = Finish(attempt.delivery, JobStatus.SUCCEEDED, b"{}")
    finish = events.outcome(attempt, made)
    assert finish is made  # the event is set on the job's Finish, which is not copied
    started, succeeded = events._pending[0], finish.event
    at = _events.stamp(now)
    fields = {"job_id": "j1", "task": "m:f", "queue": "q", "worker_id": "w1", "attempt": 1}
    assert started == _events.encode(Event("job.started", at, deliveries=2, **fields))
    assert succeeded is not None
    duration = _events.decode(succeeded).duration
    assert duration is not None and 0.25 <= duration < 30
    assert duration == round(duration, 6)  # to the microsecond (stamp is not idempotent:
    # int(0.250028 * 1e6) is 250027)
    assert succeeded == _events.encode(Event("job.succeeded", at, duration=duration, **fields))


def test_enqueue_publishes_once_per_job_written(app: Conveyor) -> None:
    @app.task(key="only-one")
    def unique() -> None: ...

    @app.task
    def plain(x: int) -> None: ...

    first, again = unique.delay(), unique.delay()  # deduplicated: the same job
    assert first.id == again.id
    delayed = app.options(delay=30).enqueue(plain, 1)
    steps = chain(plain.s(1), plain.s()).delay()
    found = everything(app)
    assert [e.job_id for e in found if e.type == "job.enqueued"] == [
        first.id,
        delayed.id,
        *steps.steps,
    ]
    (later,) = of(found, delayed.id)
    assert keys(later) == JOB_KEYS | {"priority", "eta"}
    assert later.eta == pytest.approx(later.time + 30, abs=0.01)


def test_periodic_ticks_are_enqueued_with_their_task() -> None:
    clock = FakeClock(1_700_000_000.0)
    app = Conveyor("memory://", clock=clock)

    @app.periodic(every=60)
    def report() -> None: ...

    scheduler = Scheduler(app)
    scheduler.tick()  # the first tick only starts the count
    clock.advance(60)
    (job,) = scheduler.tick()
    (enqueued,) = everything(app)
    assert (enqueued.type, enqueued.job_id, enqueued.task) == ("job.enqueued", job.id, report.name)
    assert enqueued.time == clock.time()  # the app's clock


async def test_enqueue_async_publishes_too(app: Conveyor) -> None:
    @app.task
    def plain() -> None: ...

    job = await plain.delay_async()
    assert [(e.type, e.job_id) for e in everything(app)] == [("job.enqueued", job.id)]


def test_with_events_off_nothing_is_written_at_all(tmp_path: Path) -> None:
    for url in ("memory://", f"sqlite:///{tmp_path}/off.db"):
        app = Conveyor(url, events=False)

        @app.task(retries=1, backoff=0.001)
        def boom() -> None:
            raise ValueError("x")

        @app.task
        def later() -> None: ...

        with running(Worker(app)):
            job = boom.delay()
            with pytest.raises(TaskFailed):
                job.result(timeout=30)
        app.requeue([job.id])
        app.options(delay=60).enqueue(later).cancel()
        assert app.read_events() == [] and app.broker.events_tail() == "0", url
        app.close()


# -- reading -------------------------------------------------------------------------------


def test_follow_events_reads_the_recent_past_then_waits_for_more() -> None:
    clock = FakeClock(1_700_000_000.0)
    app = Conveyor("memory://", clock=clock)

    @app.task
    def a() -> None: ...

    @app.task(queue="b")
    def b() -> None: ...

    old = a.delay()
    clock.advance(600)
    recent = b.delay()
    live = app.follow_events(since=dt.timedelta(minutes=5), types="job.*")
    assert next(live).job_id == recent.id  # the old one is older than 5 minutes
    waiting = threading.Thread(target=lambda: time.sleep(0.1) or a.delay())
    waiting.start()
    assert next(live).type == "job.enqueued"
    waiting.join()
    only_new = app.follow_events()
    fresh = b.delay()
    assert next(only_new).job_id == fresh.id
    assert old.id not in {recent.id, fresh.id}


@pytest.mark.parametrize("since", [-60, float("nan"), dt.timedelta(minutes=-1), "5m", True])
def test_a_bad_since_is_refused_not_taken_to_hide_events(since: object) -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="bad since="):
        app.follow_events(since=since)  # type: ignore[arg-type]


class _Log:
    """An event log (what ``follow`` reads) that can be away, and come back shorter."""

    def __init__(self, count: int) -> None:
        self.bodies = {i: self.body(f"old-{i}") for i in range(1, count + 1)}
        self.fail: BrokerError | None = None
        self.then: list[str] = []  # jobs whose events come once the tail was asked again

    @staticmethod
    def body(job_id: str) -> bytes:
        return _events.job_event("job.enqueued", 1.0, job_id, "t", "default")

    def events_tail(self) -> str:
        tail = max(self.bodies, default=0)
        for n, job_id in enumerate(self.then, tail + 1):
            self.bodies[n] = self.body(job_id)
        self.then = []
        return str(tail)

    def read_events(self, after: str | None, block: float, limit: int) -> list[tuple[str, bytes]]:
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        return [(str(i), b) for i, b in sorted(self.bodies.items()) if i > int(after or 0)]


def test_a_follower_reads_on_from_a_log_that_came_back_shorter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis restored from an older copy numbers new events from its older end: a reader
    past that end reads on from it (with a warning), not only once the numbers catch up."""
    log = _Log(50)
    live = _events.follow(log, 0.0, block=0.01, backoff=Backoff(0.001, 0.01, lambda: 0.5))  # type: ignore[arg-type]
    log.fail = BrokerError("cannot reach Redis")
    log.bodies = {i: b for i, b in log.bodies.items() if i <= 30}  # the copy it came back from
    log.then = ["new-1", "new-2"]  # numbered 31 and 32, below what the reader had read
    assert [next(live).job_id, next(live).job_id] == ["new-1", "new-2"]
    assert any("now ends at event 30, before event 50" in r.getMessage() for r in caplog.records)


def test_a_follower_reads_on_from_a_log_that_came_back_shorter_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restart quick enough for the client's own retries raises nothing: the reader, past
    the emptied log's end, read nothing until its numbers caught up (millions of events)."""
    log = _Log(50)
    live = _events.follow(log, 0.0, block=0.01, backoff=Backoff(0.001, 0.01, lambda: 0.5))  # type: ignore[arg-type]
    log.bodies = {}  # emptied, and no read failed
    log.then = ["new-1", "new-2"]  # numbered 1 and 2
    assert [next(live).job_id, next(live).job_id] == ["new-1", "new-2"]
    assert any("now ends at event 0, before event 50" in r.getMessage() for r in caplog.records)


def test_a_follower_stops_on_a_broker_that_is_gone_for_good() -> None:
    log = _Log(3)
    live = _events.follow(log, 0.0, block=0.01, backoff=Backoff(0.001, 0.01, lambda: 0.5))  # type: ignore[arg-type]
    log.fail = BrokerGone("the SQLite file was replaced: restart the process")
    with pytest.raises(BrokerGone, match="restart"):
        next(live)


def test_type_globs_that_match_nothing_are_refused() -> None:
    assert check_types(["job.*", "worker.offline"]) == ("job.*", "worker.offline")
    with pytest.raises(ConfigurationError, match="matches no event type"):
        check_types(["job.finished"])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0),
     ("250ms", 0.25), (" 1.5h ", 5400.0), ("0", 0.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "-3", "1h-2m", "nan", "inf"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigurationError, match="duration"):
        parse_duration(text)


def test_a_lone_jobs_enqueued_event_is_the_one_its_batch_would_carry() -> None:
    """``enqueued`` builds a lone job's event (every ``task.delay()``) without the batch's
    loop: the same bytes, eta (only a finite one still to come) and dependencies included."""
    now = 1_796_554_761.5786914
    envs = [
        Envelope("j1", "q", b"p"),
        Envelope("j2", "q", b"p", 3, now + 5.0000004, None, ("a", "b")),
        Envelope("j3", "q", b"p", eta=now - 1),
        Envelope("j4", "q", b"p", eta=float("inf")),
    ]
    batch = _events.enqueued(envs, ["m:f"] * 4, now)
    assert [_events.enqueued([env], ["m:f"], now)[0] for env in envs] == batch
    at = _events.stamp(now)
    assert [_events.decode(e) for e in batch] == [
        Event("job.enqueued", at, job_id="j1", task="m:f", queue="q", priority=0),
        Event("job.enqueued", at, job_id="j2", task="m:f", queue="q", priority=3,
              eta=_events.stamp(now + 5.0000004), depends_on=["a", "b"]),
        Event("job.enqueued", at, job_id="j3", task="m:f", queue="q", priority=0),
        Event("job.enqueued", at, job_id="j4", task="m:f", queue="q", priority=0),
    ]  # fmt: skip
    with pytest.raises(ValueError):
        _events.enqueued(envs[:1], ["m:f", "m:g"], now)


def test_the_human_format_is_one_line_per_event() -> None:
    at = 1_700_000_000.25
    lines = [
        line(Event("job.enqueued", at, job_id="j1", task="m:f", queue="q", priority=2)),
        line(Event("job.started", at, job_id="j1", task="m:f", queue="q", worker_id="w",
                   attempt=1, deliveries=2)),
        line(Event("job.retried", at, job_id="j1", task="m:f", queue="q", worker_id="w",
                   attempt=0, duration=0.0123, error="builtins.KeyError", eta=at + 2)),
        line(Event("job.dead", at, job_id="j1", task="", queue="q", reason="undecodable")),
        line(Event("worker.online", at, worker_id="w", host="h", pid=7, queues=["q"],
                   pool="threads", concurrency=4)),
        line(Event("worker.offline", at, worker_id="w", processed=12)),
    ]  # fmt: skip
    assert all("\n" not in text for text in lines)
    assert lines[0].endswith("job.enqueued     j1  m:f  [q]  priority 2")
    assert lines[1].endswith("j1  m:f  [q]  attempt 1  delivery 2  on w")
    assert "in 12.3 ms  builtins.KeyError  again at " in lines[2]
    assert "(unknown task)  [q]  undecodable" in lines[3]
    assert lines[4].endswith("worker.online    w  threads x4, queues q  pid 7 on h")
    assert lines[5].endswith("worker.offline   w  12 job(s) processed")
