"""The finisher writes queued outcomes in batches: while short runs hold run slots it waits a
little for more (``GATHER``), so a drain of tiny jobs does not fall into one call per few
outcomes; otherwise, and on stop, it writes at once."""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from conveyor import Conveyor, JobStatus
from conveyor._backoff import Backoff
from conveyor._clock import FakeClock
from conveyor._message import Delivery, Envelope, new_job_id
from conveyor.brokers import Finish
from conveyor.worker import Worker, _finisher
from conveyor.worker._attempt import Attempt
from conveyor.worker._finisher import Finisher
from conveyor.worker._inflight import Inflight


class Calls:
    """A broker stand-in that records the size of each finish call."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.written = threading.Event()

    def finish(self, outcomes: Sequence[Finish], events: Sequence[bytes] = ()) -> list[bool]:
        self.sizes.append(len(outcomes))
        self.written.set()
        return [True] * len(outcomes)

    def publish(self, events: Sequence[bytes]) -> None:
        pass


class Runs:
    """An in-flight stand-in: whether short runs hold slots, and what was let go."""

    def __init__(self, soon: bool) -> None:
        self.soon = soon
        self.active = 1  # runs holding a slot
        self.removed: list[Attempt] = []
        self.asked = threading.Event()

    def long_runs(self, window: float) -> int | None:
        self.asked.set()
        return 0 if self.soon else None

    def remove(self, attempts: Sequence[Attempt], processed: bool = True) -> None:
        self.removed.extend(attempts)

    def drop(self, attempts: list[Attempt]) -> None:
        self.remove(attempts, processed=False)


def outcome(i: int) -> tuple[Attempt, Finish]:
    delivery = Delivery(f"job-{i}", "default", b"", f"token-{i}", 1)
    return Attempt(delivery), Finish(delivery, JobStatus.SUCCEEDED, b"")


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gather that only a full batch, a lone outcome or a stop can end within a test."""
    monkeypatch.setattr(_finisher, "GATHER", 60.0)
    monkeypatch.setattr(_finisher, "GATHER_BATCH", 3)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def runs() -> Runs:
    return Runs(soon=True)


@pytest.fixture
def finisher(calls: Calls, runs: Runs) -> Iterator[Finisher]:
    finisher = Finisher(calls, runs, Backoff(0.01, 0.1, random.random))  # type: ignore[arg-type]
    finisher.start()
    yield finisher
    finisher.stop(1.0)


@pytest.mark.usefixtures("patient")
def test_while_short_runs_go_on_outcomes_are_gathered_into_one_call(
    finisher: Finisher, calls: Calls, runs: Runs
) -> None:
    for i in range(3):
        finisher.put(*outcome(i))
    assert calls.written.wait(10)
    assert calls.sizes == [3]
    assert len(runs.removed) == 3


@pytest.mark.usefixtures("patient")
def test_without_short_runs_an_outcome_is_written_at_once(
    finisher: Finisher, calls: Calls, runs: Runs
) -> None:
    runs.soon = False
    finisher.put(*outcome(0))
    assert calls.written.wait(10)
    assert calls.sizes == [1]


@pytest.mark.usefixtures("patient")
def test_a_lone_outcome_ends_the_gathering(finisher: Finisher, calls: Calls, runs: Runs) -> None:
    finisher.put(*outcome(0))
    assert runs.asked.wait(10)
    with finisher._cond:  # the thread waits (for more) once it lets go of its lock
        runs.soon, runs.active = False, 0  # the last run ended: nothing more is coming
    finisher.put(*outcome(1), alone=True)
    assert calls.written.wait(10)
    assert calls.sizes == [2]


@pytest.mark.usefixtures("patient")
def test_an_outcome_that_leaves_no_run_ends_the_gathering(
    finisher: Finisher, calls: Calls, runs: Runs
) -> None:
    # Not a lone outcome (the gathered ones are held until written), but the last run
    # ended: nothing more is coming, so nothing is waited for.
    finisher.put(*outcome(0))
    assert runs.asked.wait(10)
    with finisher._cond:  # the thread waits (for more) once it lets go of its lock
        runs.soon, runs.active = False, 0
    finisher.put(*outcome(1))
    assert calls.written.wait(10)
    assert calls.sizes == [2]


def test_the_last_of_a_few_short_jobs_is_written_once_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_finisher, "GATHER", 60.0)  # a gather that waits out its time fails
    app = Conveyor("memory://")

    @app.task
    def short(pause: float) -> float:
        time.sleep(pause)
        return pause

    worker = Worker(app, concurrency=2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert short.delay(0).result(timeout=10) == 0  # a run time is known: short
        jobs = app.enqueue_many([short.s(0), short.s(0.05)])
        assert [job.result(timeout=10) for job in jobs] == [0, 0.05]
    finally:
        worker.stop(graceful=False)
        thread.join(10)


@pytest.mark.usefixtures("patient")
def test_a_gather_beside_a_long_run_ends_when_the_short_ones_have(calls: Calls) -> None:
    # Two short jobs run beside one that has gone on for minutes: the first's outcome
    # waits for the second's, and no longer.
    inflight = Inflight(capacity=3, prefetch=4)
    warm, _ = outcome(0)
    inflight.hold([warm])
    assert inflight.admit(warm)
    inflight.complete(warm, ran=0.0001)
    long, first, second = (outcome(i) for i in (1, 2, 3))
    inflight.hold([long[0], first[0], second[0]])
    for attempt, _ in (long, first, second):
        assert inflight.admit(attempt)
        attempt.began = time.monotonic()
    long[0].began -= 600
    finisher = Finisher(calls, inflight, Backoff(0.01, 0.1, random.random))  # type: ignore[arg-type]
    finisher.start()
    try:
        assert inflight.complete(first[0], ran=0.0001)
        finisher.put(*first)
        deadline = time.monotonic() + 10
        while finisher._wake_at != _finisher.GATHER_BATCH and time.monotonic() < deadline:
            time.sleep(0.001)
        with finisher._cond:  # the thread waits (for more) once it lets go of its lock
            assert inflight.complete(second[0], ran=0.0001)
        finisher.put(*second)
        assert calls.written.wait(10)
        assert calls.sizes == [2]
    finally:
        finisher.stop(1.0)


@pytest.mark.usefixtures("patient")
def test_a_stop_writes_what_was_gathering(finisher: Finisher, calls: Calls, runs: Runs) -> None:
    finisher.put(*outcome(0))
    finisher.put(*outcome(1))
    finisher.stop(1.0)
    assert calls.sizes == [2]
    assert len(runs.removed) == 2


@pytest.mark.usefixtures("patient")
def test_a_run_long_past_the_usual_does_not_hold_up_the_outcomes_beside_it(
    calls: Calls,
) -> None:
    # Runs usually end at once (the moving average), but the one holding a slot now has
    # gone on for minutes: the outcome of a short job that ended beside it is written at
    # once, not after a gather that waits for nothing.
    inflight = Inflight(capacity=2, prefetch=4)
    inflight.start = lambda attempt: None
    warm, _ = outcome(0)
    inflight.hold([warm])
    assert inflight.admit(warm)
    inflight.complete(warm, ran=0.0001)
    long, _ = outcome(1)
    inflight.hold([long])
    assert inflight.admit(long)
    long.began = time.monotonic() - 600
    short, finish = outcome(2)
    inflight.hold([short])
    assert inflight.admit(short)
    short.began = time.monotonic()
    assert inflight.complete(short, ran=0.0001)
    finisher = Finisher(calls, inflight, Backoff(0.01, 0.1, random.random))  # type: ignore[arg-type]
    finisher.start()
    try:
        finisher.put(short, finish)
        assert calls.written.wait(10)
        assert calls.sizes == [1]
    finally:
        finisher.stop(1.0)


def test_a_finish_is_not_tracked_by_the_garbage_collector() -> None:
    # One per job; it holds only untracked structs, bytes, strings, a float and an enum
    # member, so it cannot be part of a reference cycle.
    d = Delivery("j1", "q", b"{}", "tok", 1)
    retry = Envelope("j1", "q", b"{}", eta=1.0, key="k")
    finish = Finish(d, JobStatus.SCHEDULED, b"r", 60.0, retry=retry, reason="x", event=b"e")
    assert not gc.is_tracked(finish)
    assert not gc.is_tracked(d) and not gc.is_tracked(retry)


def test_an_attempt_is_fetched_when_its_fetch_says_or_else_now() -> None:
    d = Delivery("j1", "q", b"{}", "tok", 1)
    assert Attempt(d, 12.5).started == 12.5
    before = time.monotonic()
    assert before <= Attempt(d).started <= time.monotonic()


def test_a_fetchs_vetted_jobs_take_run_slots_in_fetch_order_the_rest_wait() -> None:
    """``Inflight.admit_all`` (one lock for a fetch's jobs) gives the free slots in fetch
    order, buffers the rest for a completing run to start, and skips what is not held."""
    inflight = Inflight(capacity=2, prefetch=4)
    started: list[Attempt] = []
    inflight.start = started.append
    (a, _), (stray, _), (b, _), (c, _) = (outcome(i) for i in range(4))
    inflight.hold([a, b, c])
    assert inflight.admit_all([a, stray, b, c]) == [a, b]
    assert inflight.active == 2 and not started
    assert inflight.complete(a, ran=0.0001)
    assert started == [c] and c.slot and inflight.active == 2
    assert not inflight.admit(stray)


def test_a_refused_outcome_says_whether_the_job_went_on_or_is_gone() -> None:
    # Regression: every refusal said "another worker owns the job now", also for a job
    # deleted, purged, or lost with a failed-over Redis master: no other worker to look for.
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)
    gone, taken = new_job_id(), new_job_id()
    app.broker.enqueue([Envelope(gone, "default", b"x"), Envelope(taken, "default", b"y")])
    assert len(app.broker.fetch(["default"], "stalled", 2, 10.0, 0.0)) == 2
    clock.advance(11)  # both leases lapsed
    assert app.delete([gone]) == {gone: JobStatus.RUNNING}
    assert [d.id for d in app.broker.fetch(["default"], "next", 1, 10.0, 0.0)] == [taken]
    finisher = Finisher(app.broker, Inflight(1), Backoff(0.01, 0.1, random.random))
    assert "no longer exists" in finisher._refused(gone)
    said = finisher._refused(taken)
    assert "went on without this worker (it is running now)" in said
