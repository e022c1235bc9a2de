"""The worker on the memory broker: results, failures, retries, time limits, async tasks,
progress, dead letters and ``drain``. Time that matters comes from a ``FakeClock``."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conveyor import (
    Conveyor,
    DependencyFailed,
    InvalidOption,
    JobCancelled,
    JobDead,
    JobStatus,
    SoftTimeLimit,
    TaskFailed,
    current_job,
)
from conveyor._clock import FakeClock
from conveyor._context import CurrentJob
from conveyor._message import Delivery, Envelope, Message, Outcome, new_job_id
from conveyor.worker import Worker, drain
from conveyor.worker import _worker as worker_module
from conveyor.worker._attempt import TIMEOUT, Attempt, make_current_job
from conveyor.worker._threads import ThreadRunner


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Conveyor:
    return Conveyor("memory://", clock=clock)


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(graceful=False)
        thread.join(10)
        assert not thread.is_alive(), "the worker did not stop"


def raw(app: Conveyor, task: str, *args: object, payload: bytes | None = None) -> str:
    """Enqueue straight into the broker, as a hostile or buggy producer could."""
    job_id = new_job_id()
    if payload is None:
        payload = app.codec.encode_message(Message(id=job_id, task=task, args=list(args)))
    app.broker.enqueue([Envelope(job_id, "default", payload)])
    return job_id


# -- results and failures --------------------------------------------------------------------


def test_a_task_result_reaches_the_caller(app: Conveyor) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    job = add.delay(2, 3)
    with running(Worker(app)):
        assert job.result(timeout=30) == 5
    assert job.status is JobStatus.SUCCEEDED


def test_a_failure_carries_remote_type_message_and_traceback(app: Conveyor) -> None:
    @app.task
    def explode(n: int) -> None:
        raise ValueError(f"bad input {n}")

    job = explode.delay(7)
    assert drain(app) == 1
    with pytest.raises(TaskFailed) as info:
        job.result(timeout=30)
    assert info.value.remote_type == "builtins.ValueError"
    assert info.value.remote_message == "bad input 7"
    assert "in explode" in info.value.remote_traceback
    assert job.status is JobStatus.FAILED


def test_a_result_that_cannot_be_stored_fails_the_job(app: Conveyor) -> None:
    @app.task
    def weird() -> object:
        return object()

    job = weird.delay()
    drain(app)
    with pytest.raises(TaskFailed) as info:
        job.result(timeout=30)
    assert info.value.remote_type == "conveyor._errors.SerializationError"
    assert "cannot be stored" in info.value.remote_message


def test_progress_is_visible_while_the_job_runs(app: Conveyor) -> None:
    reported, release = threading.Event(), threading.Event()

    @app.task
    def resize() -> str:
        current_job().progress(0.4, "resizing")
        reported.set()
        release.wait(5)
        return "done"

    job = resize.delay()
    with running(Worker(app)):
        assert reported.wait(30)
        assert job.progress == (0.4, "resizing")
        release.set()
        assert job.result(timeout=30) == "done"


def test_current_job_describes_the_job(app: Conveyor) -> None:
    @app.task(queue="images")
    def who() -> list[object]:
        job = current_job()
        return [job.id, job.task, job.queue, job.attempt, job.deliveries]

    job = who.delay()
    drain(app)
    assert job.result(timeout=30) == [job.id, who.name, "images", 0, 1]


def test_the_worker_makes_current_job_as_its_init_would() -> None:
    # make_current_job sets the attributes itself (a keyword call costs more than they do)
    message = Message(id="j1", task="m:f", queue="images", attempt=2)
    delivery = Delivery("j1", "images", b"{}", "tok", deliveries=3)
    reported: list[tuple[float, str | None]] = []

    def report(value: float, note: str | None) -> None:
        reported.append((value, note))

    made = make_current_job(message, delivery, report)
    built = CurrentJob(
        job_id="j1", task="m:f", queue="images", attempt=2, deliveries=3, report=report
    )
    assert type(made) is CurrentJob and vars(made) == vars(built)
    made.progress(0.5, "half")
    assert reported == [(0.5, "half")]


# -- retries ---------------------------------------------------------------------------------


def test_retries_back_off_exponentially_on_the_clock(app: Conveyor, clock: FakeClock) -> None:
    runs: list[int] = []

    @app.task(retries=2, backoff=10.0)
    def flaky() -> None:
        runs.append(current_job().attempt)
        raise ConnectionError("try later")

    job = flaky.delay()

    def drain_half() -> int:  # rand() = 0.5: delays are 0.5 * 10 * 2**attempt
        return Worker(app, grace=0, rand=lambda: 0.5).drain(timeout=10)

    assert drain_half() == 1
    assert job.status is JobStatus.SCHEDULED and runs == [0]
    clock.advance(4.9)
    assert drain_half() == 0  # not due before 5 s
    clock.advance(0.2)
    assert drain_half() == 1 and runs == [0, 1]
    clock.advance(9.8)
    assert drain_half() == 0  # the second backoff is 10 s
    clock.advance(0.3)
    assert drain_half() == 1 and runs == [0, 1, 2]
    with pytest.raises(TaskFailed, match="try later"):
        job.result(timeout=30)


class Transient(KeyError):
    pass


def test_retry_on_matches_the_type_or_a_base_class(app: Conveyor, clock: FakeClock) -> None:
    runs = {"other": 0, "sub": 0}

    @app.task(retries=3, retry_on=KeyError, backoff=0.001)
    def other() -> None:
        runs["other"] += 1
        raise ValueError("not retried")

    @app.task(retries=3, retry_on=[KeyError], backoff=0.001)
    def sub() -> None:
        runs["sub"] += 1
        raise Transient("retried: a KeyError")

    first, second = other.delay(), sub.delay()
    for _ in range(6):
        drain(app)
        clock.advance(1)
    assert runs == {"other": 1, "sub": 4}
    assert first.status is JobStatus.FAILED and second.status is JobStatus.FAILED


def test_base_exceptions_are_not_retried_by_default(app: Conveyor) -> None:
    @app.task(retries=3)
    def leave() -> None:
        raise SystemExit(3)

    job = leave.delay()
    drain(app)
    with pytest.raises(TaskFailed) as info:
        job.result(timeout=30)
    assert info.value.remote_type == "builtins.SystemExit"


# -- time limits -----------------------------------------------------------------------------


def test_soft_time_limit_raises_inside_the_task(app: Conveyor, clock: FakeClock) -> None:
    cleaned = threading.Event()

    @app.task(timeout=5)
    def slow() -> None:
        clock.advance(6)  # the job is now past its limit on the app's clock
        try:
            for _ in range(1200):  # 60 s, unless the limit interrupts it
                time.sleep(0.05)
        except SoftTimeLimit:
            cleaned.set()
            raise

    job = slow.delay()
    started = time.monotonic()
    drain(app, timeout=30)
    assert time.monotonic() - started < 30  # long before the task's own 60 s
    assert cleaned.is_set()
    with pytest.raises(TaskFailed) as info:
        job.result(timeout=30)
    assert info.value.remote_type == "conveyor._errors.SoftTimeLimit"
    assert "time limit of 5.0 s" in info.value.remote_message


@pytest.mark.parametrize("value", [42, {"answer": 42}], ids=["plain", "checked"])
def test_a_time_limit_reached_while_the_result_is_encoded_keeps_the_result(
    app: Conveyor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, value: object
) -> None:
    # Regression: the thread was a target until the result was encoded, and a SoftTimeLimit
    # landing in the codec was taken for the value's fault: the job failed with "cannot be
    # stored as its result" (a SerializationError), or the fast path for plain values
    # swallowed it. The limit is the task's: once it has returned, its result is kept.
    fired = threading.Event()
    interrupt = ThreadRunner.interrupt

    def interrupt_and_tell(self: ThreadRunner, attempt: Attempt, why: str) -> None:
        interrupt(self, attempt, why)
        if why == TIMEOUT:
            fired.set()

    monkeypatch.setattr(ThreadRunner, "interrupt", interrupt_and_tell)

    @app.task(timeout=5)
    def compute() -> object:
        return value

    job = compute.delay()
    encoder = app.codec._encoder

    class SlowEncoder:  # the result's encoding outlasts the job's time limit
        def encode(self, obj: object) -> bytes:
            if type(obj) is Outcome and not fired.is_set():
                clock.advance(6)
                fired.wait(30)
            return encoder.encode(obj)

    monkeypatch.setattr(app.codec, "_encoder", SlowEncoder())
    drain(app, timeout=30)
    assert fired.is_set()
    assert job.result(timeout=30) == value


def test_async_time_limit_cancels_the_coroutine(app: Conveyor, clock: FakeClock) -> None:
    @app.task(timeout=1)
    async def slow() -> None:
        clock.advance(2)
        await asyncio.sleep(30)

    job = slow.delay()
    drain(app, timeout=10)
    with pytest.raises(TaskFailed) as info:
        job.result(timeout=30)
    assert info.value.remote_type == "conveyor._errors.SoftTimeLimit"


# -- async tasks -----------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "async"])
def test_async_tasks_share_one_event_loop(app: Conveyor, pool: str) -> None:
    loops: set[int] = set()
    names: set[str] = set()
    inside: set[int] = set()

    @app.task
    async def fetch(n: int) -> int:
        loops.add(id(asyncio.get_running_loop()))
        names.add(threading.current_thread().name)
        current_job().progress(0.5)
        inside.add(n)
        deadline = time.monotonic() + 30
        while len(inside) < 20 and time.monotonic() < deadline:  # until all 20 run at once
            await asyncio.sleep(0.01)
        return n * 2 if len(inside) == 20 else -1

    jobs = [fetch.delay(i) for i in range(20)]
    with running(Worker(app, pool=pool, concurrency=20)):
        # they ran concurrently: one after the other, none would see the others start
        assert [j.result(timeout=60) for j in jobs] == [i * 2 for i in range(20)]
    assert len(loops) == 1 and names == {"conveyor-asyncio"}


def test_async_failure_is_reported(app: Conveyor) -> None:
    @app.task
    async def bad() -> None:
        await asyncio.sleep(0)
        raise LookupError("gone")

    job = bad.delay()
    drain(app)
    with pytest.raises(TaskFailed, match="gone"):
        job.result(timeout=30)


# -- dead letters ----------------------------------------------------------------------------


def _dead_reason(app: Conveyor, job_id: str) -> str:
    with pytest.raises(JobDead) as info:
        app.job(job_id).result(timeout=30)
    return info.value.reason


def test_unknown_task_is_dead_lettered_and_the_worker_goes_on(app: Conveyor) -> None:
    @app.task
    def ok() -> str:
        return "ok"

    unknown = raw(app, "no_such_task")
    after = ok.delay()
    with running(Worker(app)):
        assert after.result(timeout=30) == "ok"
    assert _dead_reason(app, unknown).startswith("unknown task 'no_such_task'")
    assert app.job(unknown).status is JobStatus.DEAD
    assert [e.id for e in app.broker.entries(JobStatus.DEAD, None, 10)] == [unknown]


def test_untrusted_callables_are_dead_lettered_and_never_imported(
    app: Conveyor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "booby_trap.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    jobs = [
        raw(app, "os:system", "echo pwned"),
        raw(app, "builtins:eval", "1 + 1"),
        raw(app, "booby_trap:fn"),
    ]
    assert drain(app) == 3
    for job_id in jobs:
        assert _dead_reason(app, job_id).startswith("untrusted callable")
    assert "booby_trap" not in sys.modules


def test_a_trusted_module_cannot_smuggle_an_untrusted_callable(
    app: Conveyor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "jobs.py").write_text("import os\n\ndef total(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fine = raw(app, "shop.jobs:total", 21)
    smuggled = raw(app, "shop.jobs:os.system", "echo pwned")
    assert Worker(app, trust=["shop"]).drain(timeout=10) == 2
    assert app.job(fine).result(timeout=30) == 42
    assert "'posix' is not a trusted package" in _dead_reason(app, smuggled)


def test_module_and_app_trust_are_honoured(
    clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for pkg in ("alpha", "beta"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("def name():\n    return __name__\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Conveyor("memory://", clock=clock, trust=["beta"])
    a, b = raw(app, "alpha:name"), raw(app, "beta:name")
    Worker(app, module="alpha.tasks").drain(timeout=10)
    assert app.job(a).result(timeout=30) == "alpha"
    assert app.job(b).result(timeout=30) == "beta"


def test_undecodable_payload_is_dead_lettered_and_kept(app: Conveyor) -> None:
    @app.task
    def ok() -> str:
        return "ok"

    garbage = raw(app, "", payload=b"\x00not json at all")
    after = ok.delay()
    drain(app)
    assert _dead_reason(app, garbage).startswith("undecodable payload: ")
    assert after.result(timeout=30) == "ok"
    (entry,) = app.broker.entries(JobStatus.DEAD, None, 10)
    assert entry.payload == b"\x00not json at all"


def test_a_job_delivered_too_often_is_dead_lettered(app: Conveyor, clock: FakeClock) -> None:
    @app.task
    def crashy() -> None:  # pragma: no cover - never runs
        raise AssertionError("a poison job must not run again")

    job = crashy.delay()
    for _ in range(2):  # two workers took it and died: their leases expire
        assert app.broker.fetch(["default"], "dead-worker", 1, 10, 0)
        clock.advance(11)
    Worker(app, max_deliveries=2).drain(timeout=10)
    reason = _dead_reason(app, job.id)
    assert reason == "delivered 3 times without finishing; it may be crashing the worker"


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_stops_a_running_sync_job(app: Conveyor) -> None:
    started, finished = threading.Event(), threading.Event()

    @app.task
    def forever() -> None:
        started.set()
        while True:
            time.sleep(0.01)
        finished.set()  # pragma: no cover

    job = forever.delay()
    with running(Worker(app, lease=0.3)):
        assert started.wait(30)
        assert job.cancel()
        with pytest.raises(Exception, match="cancelled"):
            job.result(timeout=30)
    assert job.status is JobStatus.CANCELLED
    assert not finished.is_set()


def test_cancel_stops_a_running_async_job(app: Conveyor) -> None:
    started = threading.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    job = forever.delay()
    with running(Worker(app, lease=0.3)):
        assert started.wait(30)
        job.cancel()
        with pytest.raises(Exception, match="cancelled"):
            job.result(timeout=30)
    assert job.status is JobStatus.CANCELLED


def test_a_cancel_stops_a_job_within_about_a_second_whatever_the_lease() -> None:
    # Regression: the worker heard of a cancel only at a renewal, each third of the lease:
    # with the default 30 s lease a 4 s job cancelled as it started ran on and succeeded.
    app = Conveyor("memory://")  # real time: the keeper's renewals carry the cancel
    started, finished = threading.Event(), threading.Event()

    @app.task
    def four_seconds() -> None:
        started.set()
        for _ in range(400):
            time.sleep(0.01)
        finished.set()

    job = four_seconds.delay()
    with running(Worker(app)):  # the default lease
        assert started.wait(30)
        asked = time.monotonic()
        assert job.cancel()
        with pytest.raises(JobCancelled):
            job.result(timeout=30)
        took = time.monotonic() - asked
    assert not finished.is_set()
    assert job.status is JobStatus.CANCELLED
    assert took < 3.0  # the keeper checks each second; the job alone would take 4 s


def test_a_cancelled_job_waiting_in_the_buffer_does_not_run_nor_its_dependents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The buffer is kept past the run before it (no hand-back, which would end the job
    # cancelled too): only the keeper's check, within about a second, stops it.
    monkeypatch.setattr(worker_module, "BUFFER_PATIENCE", 60.0)
    app = Conveyor("memory://")
    ran: list[str] = []
    started = threading.Event()

    @app.task
    def slow() -> None:
        started.set()
        for _ in range(150):  # 1.5 s: past the keeper's first check, within the buffer's patience
            time.sleep(0.01)

    @app.task
    def record(name: str) -> None:
        ran.append(name)

    first = slow.delay()
    second = record.delay("second")
    after = record.options(depends_on=second).delay("after")
    with running(Worker(app, concurrency=1)):
        assert started.wait(30)
        assert second.status is JobStatus.RUNNING  # fetched into the buffer behind the first
        assert second.cancel()
        first.result(timeout=30)
        with pytest.raises(JobCancelled):
            second.result(timeout=30)
        with pytest.raises(DependencyFailed):
            after.result(timeout=30)
    assert ran == []


# -- drain -----------------------------------------------------------------------------------


def test_drain_runs_everything_queued_including_what_jobs_enqueue(app: Conveyor) -> None:
    @app.task
    def child(n: int) -> int:
        return n

    @app.task(queue="spawner")
    def parent(n: int) -> int:
        for i in range(n):
            child.delay(i)
        return n

    jobs = [parent.delay(3) for _ in range(4)]
    assert drain(app, timeout=10) == 4 + 12
    assert [j.result(timeout=0) for j in jobs] == [3, 3, 3, 3]
    assert all(s.queued == s.running == 0 for s in app.broker.stats())


def test_drain_leaves_other_queues_and_later_jobs(app: Conveyor) -> None:
    @app.task
    def f() -> None: ...

    later = f.options(delay=60).delay()
    elsewhere = f.options(queue="other").delay()
    assert Worker(app).drain(timeout=5) == 0
    assert later.status is JobStatus.SCHEDULED and elsewhere.status is JobStatus.QUEUED


def test_drain_times_out_and_hands_back_what_runs(app: Conveyor) -> None:
    gate = threading.Event()

    @app.task
    def stuck() -> None:
        gate.wait(10)

    job = stuck.delay()
    with pytest.raises(TimeoutError):
        Worker(app).drain(timeout=0.3)
    gate.set()
    assert job.status is JobStatus.QUEUED  # released for the next worker


@pytest.mark.parametrize("timeout", [float("nan"), -1, "5"])
def test_drain_refuses_a_timeout_that_is_not_a_duration(app: Conveyor, timeout: object) -> None:
    job = app.task(lambda: None, name="noop").delay()
    with pytest.raises(InvalidOption, match="timeout takes"):
        Worker(app).drain(timeout=timeout)  # type: ignore[arg-type]
    assert job.status is JobStatus.QUEUED  # nothing queued was touched


# -- a fetch whose reply comes late ----------------------------------------------------------


def _slow_fetch(app: Conveyor, clock: FakeClock, steal: bool) -> list[str]:
    """The first fetch that delivers takes 1.2 s (a stopped process, a stalled network):
    longer than the worker's block plus a third of its 0.3 s lease. With ``steal``, the lease
    runs out meanwhile and another worker takes the job. Returns what the worker ran."""
    ran: list[str] = []

    @app.task
    def note(tag: str) -> None:
        ran.append(tag)

    real = app.broker.fetch
    slowed = threading.Event()

    def fetch(*args: object, **kwargs: object) -> object:
        deliveries = real(*args, **kwargs)  # type: ignore[arg-type]
        if deliveries and not slowed.is_set():
            slowed.set()
            if steal:
                clock.advance(1.0)
                assert real(["default"], "thief", 1, 30.0, 0.0)
            time.sleep(1.2)
        return deliveries

    app.broker.fetch = fetch  # type: ignore[method-assign]
    job = note.delay("late")
    with running(Worker(app, lease=0.3, concurrency=1)):
        assert slowed.wait(30)
        if steal:
            time.sleep(1.2 + 0.5)  # the reply, then time to run it if it were run
            assert app.job(job.id).status == JobStatus.RUNNING  # the thief's, untouched
        else:
            job.result(timeout=30)
    return ran


def test_a_late_fetch_reply_whose_lease_was_taken_over_is_not_run(
    app: Conveyor, clock: FakeClock
) -> None:
    assert _slow_fetch(app, clock, steal=True) == []


def test_a_late_fetch_reply_still_ours_runs(app: Conveyor, clock: FakeClock) -> None:
    assert _slow_fetch(app, clock, steal=False) == ["late"]
