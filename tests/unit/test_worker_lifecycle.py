"""How the worker starts, stops, batches, renews leases and rides out broker trouble."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from conveyor import (
    BrokerAuthError,
    BrokerGone,
    BrokerUnavailable,
    Conveyor,
    JobStatus,
    current_job,
)
from conveyor._clock import FakeClock
from conveyor._message import Delivery, WorkerInfo
from conveyor.brokers import Finish, LeaseState
from conveyor.brokers.memory import MemoryBroker
from conveyor.worker import Worker
from conveyor.worker._worker import PREFETCH_LEAST, PREFETCH_SLOTS

from .test_worker_concurrency import BatchTokens


class Recording(MemoryBroker):
    """The memory broker, counting calls and failing or slowing them on demand."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        super().__init__(clock)
        self.fetch_counts: list[int] = []
        self.finish_sizes: list[int] = []
        self.fail_fetches = 0
        self.refuse_fetches = False  # as a server refuses wrong credentials: every time
        self.fail_finishes = 0
        self.fail_renewals = 0
        self.finish_delay = 0.0
        self.gone = ""  # as the SQLite broker refuses everything once its file is deleted

    def _refuse_if_gone(self) -> None:
        if self.gone:
            raise BrokerGone(self.gone)

    def fetch(
        self, queues: Sequence[str], consumer: str, count: int, lease: float, block: float
    ) -> list[Delivery]:
        self.fetch_counts.append(count)
        self._refuse_if_gone()
        if self.refuse_fetches:
            raise BrokerAuthError("Redis refused the login: check the password in the URL")
        if self.fail_fetches:
            self.fail_fetches -= 1
            raise BrokerUnavailable("connection refused (the broker is restarting)")
        return super().fetch(queues, consumer, count, lease, block)

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        self._refuse_if_gone()
        if self.fail_renewals:
            self.fail_renewals -= 1
            raise BrokerUnavailable("connection refused (the broker is restarting)")
        return super().renew(deliveries, lease)

    def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        self._refuse_if_gone()
        super().heartbeat(info, ttl)

    def finish(self, outcomes: Sequence[Finish], events: Sequence[bytes] = ()) -> list[bool]:
        if self.fail_finishes:
            self.fail_finishes -= 1
            raise BrokerUnavailable("connection reset")
        time.sleep(self.finish_delay)
        self.finish_sizes.append(len(outcomes))
        return super().finish(outcomes, events)


@pytest.fixture
def broker() -> Recording:
    return Recording()


@pytest.fixture
def app(broker: Recording) -> Conveyor:
    return Conveyor(broker=broker)


@contextmanager
def background(worker: Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop(graceful=False)
        thread.join(30)
        assert not thread.is_alive()


# -- stopping --------------------------------------------------------------------------------


def test_graceful_stop_lets_running_jobs_finish(app: Conveyor) -> None:
    started = threading.Event()

    @app.task
    def short() -> str:
        started.set()
        time.sleep(0.5)
        return "finished"

    job = short.delay()
    worker = Worker(app, grace=60)
    with background(worker) as thread:
        assert started.wait(30)
        worker.stop()
        thread.join(30)  # the job's 0.5 s, not the 60 s grace
        assert not thread.is_alive()
    assert job.result(timeout=0) == "finished"
    assert app.broker.workers() == []  # forget_worker on the way out


def test_jobs_that_run_long_are_not_buffered(app: Conveyor, broker: Recording) -> None:
    @app.task
    def slowish(n: int) -> int:
        time.sleep(0.15)  # 2 slots x PREFETCH_WINDOW (0.02 s) / 0.15 s: no buffer at all
        return n

    jobs = app.enqueue_many([slowish.s(i) for i in range(8)])
    with background(Worker(app, concurrency=2)):
        assert [j.result(timeout=10) for j in jobs] == list(range(8))
    assert broker.fetch_counts[0] == 4  # run times unknown yet: the slots and a full buffer
    # Once runs are known to be long, a fetch asks for free slots only (a buffered job
    # started while the broker is away would run into the outage too).
    assert max(broker.fetch_counts[1:]) <= 2


def test_a_single_slot_worker_buffers_more_than_4_tiny_jobs(
    app: Conveyor, broker: Recording
) -> None:
    """The buffer's bound per slot (PREFETCH_SLOTS) is not a single-slot worker's whole
    buffer: with tiny jobs it fetched 5 at a time and spent most of its time in calls."""

    @app.task
    def tiny(n: int) -> int:
        return n

    jobs = app.enqueue_many([tiny.s(i) for i in range(600)])
    with background(Worker(app, concurrency=1)):
        assert [j.result(timeout=30) for j in jobs] == list(range(600))
    assert broker.fetch_counts[0] == 2  # run times unknown yet: its slot and one buffered
    assert max(broker.fetch_counts) > 1 + PREFETCH_SLOTS  # once its runs are known short
    assert max(broker.fetch_counts) <= 1 + PREFETCH_LEAST


def test_buffered_jobs_are_handed_back_at_stop_not_run(app: Conveyor, broker: Recording) -> None:
    started = threading.Event()
    runs: list[str] = []

    @app.task
    def step(tag: str) -> str:
        runs.append(tag)
        started.set()
        time.sleep(0.5)
        return tag

    first, second = step.delay("first"), step.delay("second")
    worker = Worker(app, concurrency=1, grace=60)
    with background(worker) as thread:
        assert started.wait(30)
        assert broker.fetch_counts[0] == 2  # one run slot, one buffered
        worker.stop()
        thread.join(30)  # the running job, not the 60 s grace
        assert not thread.is_alive()
    assert first.result(timeout=0) == "first"
    assert runs == ["first"]
    assert second.status == JobStatus.QUEUED  # handed back for immediate redelivery


def test_jobs_outlasting_the_grace_period_are_handed_back(app: Conveyor) -> None:
    started, gate = threading.Event(), threading.Event()

    @app.task
    def long() -> None:
        started.set()
        gate.wait(60)

    job = long.delay()
    worker = Worker(app, grace=0.3)
    with background(worker) as thread:
        assert started.wait(30)
        began = time.monotonic()
        worker.stop()
        thread.join(30)
        assert time.monotonic() - began < 30  # the grace, not the job's 60 s
    gate.set()
    assert job.status is JobStatus.QUEUED
    (again,) = app.broker.fetch(["default"], "next-worker", 1, 30, 0)
    assert again.id == job.id and again.deliveries == 1  # a release is not a delivery


def test_a_stop_with_no_grace_left_says_no_negative_wait(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    started, gate = threading.Event(), threading.Event()

    @app.task
    def long() -> None:
        started.set()
        gate.wait(60)

    long.delay()
    worker = Worker(app, grace=0)
    with caplog.at_level(logging.INFO, "conveyor.worker"), background(worker) as thread:
        assert started.wait(30)
        worker.stop()
        thread.join(30)
    gate.set()
    said = caplog.text
    assert "grace 0 s" in said
    assert "waiting up to -" not in said


def test_a_hard_stop_hands_back_at_once(app: Conveyor) -> None:
    started, gate = threading.Event(), threading.Event()

    @app.task
    def long() -> None:
        started.set()
        gate.wait(120)

    job = long.delay()
    worker = Worker(app, grace=60)
    with background(worker) as thread:
        assert started.wait(30)
        began = time.monotonic()
        worker.stop(graceful=False)
        thread.join(30)
        assert time.monotonic() - began < 30  # not the 60 s grace
    gate.set()
    assert job.status is JobStatus.QUEUED


def test_sigterm_then_a_second_signal(app: Conveyor) -> None:
    started, gate = threading.Event(), threading.Event()

    @app.task
    def long() -> None:
        started.set()
        gate.wait(120)

    job = long.delay()
    before = signal.getsignal(signal.SIGTERM)

    def signal_twice() -> None:
        assert started.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)  # graceful: waits for the 60 s grace...
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)  # ...until the second signal

    threading.Thread(target=signal_twice, daemon=True).start()
    began = time.monotonic()
    Worker(app, grace=60).run()  # the main thread: signal handlers are installed
    assert time.monotonic() - began < 30  # not the 60 s grace
    gate.set()
    assert job.status is JobStatus.QUEUED
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_is_not_signal_based_off_the_main_thread(app: Conveyor) -> None:
    worker = Worker(app)
    before = signal.getsignal(signal.SIGTERM)
    with background(worker):
        time.sleep(0.2)
        assert signal.getsignal(signal.SIGTERM) is before


# -- batching --------------------------------------------------------------------------------


def test_jobs_buffered_behind_runs_that_turned_long_go_to_a_free_worker(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose runs were tiny buffers many jobs; when its one slot then takes a long
    job, the buffered ones are handed back once the oldest has waited the patience, and a
    second, idle worker runs them while the long job still runs. The first worker takes
    none back meanwhile (no buffer until a run ends: one hand-back), and every job runs
    once."""
    # Three seconds, for this test to see them buffered first on a loaded machine; and a
    # full buffer (32) for the warm-up runs even if they are slow there.
    monkeypatch.setattr("conveyor.worker._worker.BUFFER_PATIENCE", 3.0)
    monkeypatch.setattr("conveyor.worker._inflight.PREFETCH_WINDOW", 1.0)
    caplog.set_level(logging.INFO, "conveyor.worker")
    long_runs, release = threading.Event(), threading.Event()
    ran: list[tuple[str, int]] = []  # (which job, the thread that ran it)

    @app.task
    def tiny(n: int) -> int:
        ran.append((f"tiny-{n}", threading.get_ident()))
        return n

    @app.task
    def long() -> str:
        ran.append(("long", threading.get_ident()))
        long_runs.set()
        assert release.wait(30)
        return "long"

    warm = app.enqueue_many([tiny.s(i) for i in range(40)])  # its runs are known tiny
    with background(Worker(app, concurrency=1)):
        assert [j.result(timeout=30) for j in warm] == list(range(40))
        # One fetch: the long job takes the slot, the tiny ones are buffered behind it.
        batch = app.enqueue_many([long.s(), *(tiny.s(i) for i in range(40, 50))])
        assert long_runs.wait(30)
        assert {j.status for j in batch} == {JobStatus.RUNNING}  # the tiny ones: buffered
        first = {t for _, t in ran}  # the first worker's threads, all still alive
        with background(Worker(app, concurrency=1)):
            assert [j.result(timeout=30) for j in batch[1:]] == list(range(40, 50))
            assert not batch[0].done()  # the long job still runs
            assert not first & {t for job, t in ran[41:]}  # the second worker ran them
            release.set()
            assert batch[0].result(timeout=30) == "long"
    assert sorted(job for job, _ in ran) == sorted(["long", *(f"tiny-{i}" for i in range(50))])
    handed = [r.getMessage() for r in caplog.records if "handing them back" in r.getMessage()]
    assert len(handed) == 1 and handed[0].startswith("10 buffered job(s)"), handed


def test_fetches_fill_slots_and_buffer_and_finishes_are_batched(
    app: Conveyor, broker: Recording
) -> None:
    @app.task
    def tiny(n: int) -> int:
        return n

    broker.finish_delay = 0.02  # a broker round trip: outcomes gather meanwhile
    jobs = app.enqueue_many([tiny.s(i) for i in range(200)])
    with background(Worker(app, concurrency=8)):
        assert [j.result(timeout=10) for j in jobs] == list(range(200))
    assert broker.fetch_counts[0] == 16  # 8 run slots and 8 buffered: no run time known yet
    # Known to be tiny, runs may buffer up to 4 per slot, and at least PREFETCH_LEAST.
    assert max(broker.fetch_counts) <= 8 + max(PREFETCH_SLOTS * 8, PREFETCH_LEAST)
    assert sum(broker.finish_sizes) == 200
    assert len(broker.finish_sizes) < 60, broker.finish_sizes  # not one call per job


def test_jobs_run_while_a_slow_finish_call_writes_their_predecessors(
    app: Conveyor, broker: Recording, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As many outcomes may await their write as deliveries may wait to run or run: while
    a finish call is out, the worker fetches and runs the next slots' and buffer's worth
    (it once waited for the call, holding at most 2 x 2 slots + 8 buffered in all), and
    never holds more than twice that."""
    ran = 0

    @app.task
    def tiny(n: int) -> int:
        nonlocal ran
        ran += 1
        return n

    during: list[int] = []  # per finish call: its outcomes and the runs that ended meanwhile
    finish = broker.finish

    def timed(outcomes: Sequence[Finish], events: Sequence[bytes] = ()) -> list[bool]:
        before = ran
        written = finish(outcomes, events)
        during.append(len(outcomes) + ran - before)
        return written

    broker.finish = timed  # type: ignore[method-assign]
    broker.finish_delay = 0.2  # a slow broker: each call returns long after the runs end
    monkeypatch.setattr("conveyor.worker._worker.PREFETCH_LEAST", 0)  # 4 per slot alone
    jobs = app.enqueue_many([tiny.s(i) for i in range(80)])
    with background(Worker(app, concurrency=2)):  # 2 slots, 8 buffered once runs are known
        assert [j.result(timeout=20) for j in jobs] == list(range(80))
    assert max(during) <= 2 * (2 + 8), during
    assert max(during[:-1]) >= 16, during  # at most 2 x 2 + 8 = 12 when the fetch waited


# -- broker trouble --------------------------------------------------------------------------


def _running(worker: Worker) -> tuple[threading.Thread, list[BaseException]]:
    """``worker.run()`` in a thread, and where what it raises goes."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_fetch_errors_back_off_and_the_worker_keeps_going(
    app: Conveyor, broker: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    def ok() -> str:
        return "ok"

    broker.fail_fetches = 4
    job = ok.delay()
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, "conveyor.worker"), background(Worker(app)):
        assert job.result(timeout=10) == "ok"
    assert time.monotonic() - began > 0.3  # it waited between attempts: no hot loop
    assert "cannot fetch from the broker" in caplog.text


def test_renewals_that_fail_for_a_while_are_said_once(
    app: Conveyor, broker: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    # A renewal is retried each second of an outage (its leases must not lapse): each try
    # was a WARNING, dozens a minute for one outage.
    @app.task
    def slow() -> str:
        time.sleep(1.5)
        return "done"

    broker.fail_renewals = 6
    job = slow.delay()
    with caplog.at_level(logging.DEBUG, "conveyor.worker"), background(Worker(app, lease=0.6)):
        assert job.result(timeout=30) == "done"
    tries = [r for r in caplog.records if r.getMessage().startswith("cannot renew")]
    assert len(tries) >= 3 and broker.fail_renewals == 0  # retried, quickly
    assert [r.levelno for r in tries] == [logging.WARNING] + [logging.DEBUG] * (len(tries) - 1)
    assert "renewing leases again" in caplog.text


def test_refused_credentials_stop_the_worker_and_hand_back_what_runs(
    app: Conveyor, broker: Recording
) -> None:
    """A BrokerAuthError is no outage: retrying cannot make the credentials good, so the
    worker hands its running jobs back and raises it (``conveyor worker`` exits 1)."""
    started, gate = threading.Event(), threading.Event()

    @app.task
    def held() -> str:
        started.set()
        gate.wait(120)
        return "done"

    job = held.delay()
    worker = Worker(app, concurrency=2, grace=60)
    thread, errors = _running(worker)
    assert started.wait(30)
    fetches = len(broker.fetch_counts)
    broker.refuse_fetches = True
    thread.join(30)  # one fetch block (1 s) at most, not the 60 s grace
    gate.set()
    assert not thread.is_alive()
    assert len(broker.fetch_counts) == fetches + 1  # refused once, never asked again
    assert [type(e) for e in errors] == [BrokerAuthError]
    assert job.status == JobStatus.QUEUED  # handed back for another worker

    with pytest.raises(BrokerAuthError, match="refused the login"):
        Worker(app).drain(timeout=5)


@pytest.mark.parametrize("seen_by", ["fetch", "keeper"])
def test_a_broker_whose_storage_is_gone_stops_the_worker_at_once(
    app: Conveyor, broker: Recording, monkeypatch: pytest.MonkeyPatch, seen_by: str
) -> None:
    """BrokerGone (the SQLite file deleted or replaced) is final: the worker stops without
    the grace period and raises it. A worker busy with long jobs fetches nothing: its
    keeper's renewal or heartbeat sees it."""
    started, gate = threading.Event(), threading.Event()

    @app.task
    def held() -> str:
        started.set()
        gate.wait(120)
        return "done"

    if seen_by == "keeper":  # the fetches go on working: only the keeper can see it
        monkeypatch.setattr(broker, "fetch", super(Recording, broker).fetch)
    else:  # a free slot fetches; the keeper's calls go on working
        monkeypatch.setattr(broker, "renew", super(Recording, broker).renew)
        monkeypatch.setattr(broker, "heartbeat", super(Recording, broker).heartbeat)
    held.delay()
    worker = Worker(app, concurrency=1 if seen_by == "keeper" else 2, grace=60, lease=0.6)
    thread, errors = _running(worker)
    try:
        assert started.wait(30)
        broker.gone = "the SQLite database /x/jobs.db was deleted or moved away"
        thread.join(30)  # a renewal (every 0.2 s) or a fetch block (1 s), not the 60 s grace
        assert not thread.is_alive()
    finally:
        gate.set()
    assert [str(e) for e in errors] == [broker.gone]
    assert isinstance(errors[0], BrokerGone)


def test_finish_errors_are_retried_until_the_result_is_written(
    app: Conveyor, broker: Recording
) -> None:
    @app.task
    def ok() -> str:
        return "ok"

    broker.fail_finishes = 3
    job = ok.delay()
    with background(Worker(app)):
        assert job.result(timeout=10) == "ok"


# -- leases ----------------------------------------------------------------------------------


def test_a_long_job_keeps_its_lease_and_runs_once() -> None:
    app = Conveyor("memory://")  # real time: the lease really runs out without renewal
    runs: list[float] = []

    @app.task
    def long() -> str:
        runs.append(time.monotonic())
        time.sleep(4.0)  # 4x the lease
        return "once"

    job = long.delay()
    # Renewed every third of a second: a stall shorter than two thirds loses nothing.
    with background(Worker(app, lease=1.0)):
        time.sleep(2.0)
        assert app.broker.fetch(["default"], "thief", 1, 10, 0) == []
        assert job.result(timeout=30) == "once"
    assert len(runs) == 1


def test_a_buffered_job_keeps_its_lease_and_runs_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kept in the buffer past 4 leases (here it would be handed back after 1 s otherwise).
    monkeypatch.setattr("conveyor.worker._worker.BUFFER_PATIENCE", 60.0)
    app = Conveyor("memory://")  # real time: the lease really runs out without renewal
    runs: list[str] = []

    @app.task
    def work(tag: str, seconds: float) -> str:
        runs.append(tag)
        time.sleep(seconds)
        return tag

    slow, waiting = work.delay("slow", 4.0), work.delay("waiting", 0)  # 4x the lease
    worker = Worker(app, concurrency=1, lease=1.0)
    with caplog.at_level(logging.WARNING, "conveyor.worker"), background(worker):
        time.sleep(2.0)
        assert app.broker.fetch(["default"], "thief", 1, 10, 0) == []
        assert [slow.result(timeout=30), waiting.result(timeout=30)] == ["slow", "waiting"]
    assert runs == ["slow", "waiting"]
    assert "refused" not in caplog.text


class LosesFirstLease(MemoryBroker):
    """Renewal answers "lost" for the first delivery of the job whose argument is
    ``"lapsing"``, and only that: the others' leases stay ours."""

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        states = super().renew(deliveries, lease)
        return [
            LeaseState.LOST if d.deliveries == 1 and b'"lapsing"' in d.payload else s
            for d, s in zip(deliveries, states, strict=True)
        ]


def test_a_buffered_job_whose_lease_was_lost_does_not_run() -> None:
    app = Conveyor(broker=LosesFirstLease())  # real time: the lost lease lapses
    runs: list[tuple[str, int]] = []

    @app.task
    def work(tag: str, seconds: float) -> str:
        job = current_job()
        assert job is not None
        runs.append((tag, job.deliveries))
        time.sleep(seconds)
        return tag

    first, lapsing = work.delay("first", 0.6), work.delay("lapsing", 0)
    with background(Worker(app, concurrency=1, lease=0.3)):
        assert [first.result(timeout=30), lapsing.result(timeout=30)] == ["first", "lapsing"]
    # Its first delivery waited in the buffer while the keeper heard it was lost: it never
    # ran; the job ran once, from its second delivery.
    assert runs == [("first", 1), ("lapsing", 2)]


def test_leases_are_kept_when_a_batch_shares_one_token(caplog: pytest.LogCaptureFixture) -> None:
    app = Conveyor(broker=BatchTokens())
    runs: list[str] = []

    @app.task
    def work(tag: str, seconds: float) -> str:
        runs.append(tag)
        time.sleep(seconds)
        return tag

    jobs = [work.delay("slow", 1.2)] + [work.delay(f"quick{i}", 0) for i in range(7)]
    with caplog.at_level(logging.WARNING, "conveyor.worker"), background(Worker(app, lease=0.4)):
        assert [j.result(timeout=10) for j in jobs] == ["slow"] + [f"quick{i}" for i in range(7)]
    assert runs.count("slow") == 1, runs
    assert "refused" not in caplog.text


def test_a_lost_lease_means_the_result_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)
    stolen: list[Delivery] = []

    @app.task
    def stalls() -> str:
        clock.advance(100)  # the worker "froze" past its lease...
        stolen.extend(app.broker.fetch(["default"], "other-worker", 1, 30, 0))  # ...reclaimed
        return "zombie result"

    job = stalls.delay()
    # One slot: the worker cannot fetch (and itself reclaim) the job while it runs.
    worker = Worker(app, lease=30, concurrency=1)
    with caplog.at_level(logging.WARNING, "conveyor.worker"), background(worker):
        deadline = time.monotonic() + 5
        while "was refused" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(stolen) == 1 and stolen[0].deliveries == 2
    assert job.status is JobStatus.RUNNING  # the live attempt, untouched by the zombie
    assert "was refused" in caplog.text


def test_heartbeat_announces_the_worker(app: Conveyor) -> None:
    worker = Worker(app, queues=["default", "images"], concurrency=3, pool="async")
    with background(worker):
        deadline = time.monotonic() + 5
        while not app.broker.workers() and time.monotonic() < deadline:
            time.sleep(0.02)
        (info,) = app.broker.workers()
    assert info.id == worker.id and info.pid == os.getpid()
    assert (info.queues, info.concurrency, info.pool) == (["default", "images"], 3, "async")
    assert app.broker.workers() == []


def test_bad_settings_are_refused(app: Conveyor) -> None:
    from conveyor import ConfigurationError, InvalidName

    with pytest.raises(ConfigurationError, match="pool"):
        Worker(app, pool="fibers")
    with pytest.raises(ConfigurationError, match="concurrency"):
        Worker(app, concurrency=0)
    with pytest.raises(ConfigurationError, match="queues"):
        Worker(app, queues="default")
    with pytest.raises(InvalidName):
        Worker(app, queues=["no spaces"])
    with pytest.raises(ConfigurationError, match="module"):
        Worker(app, pool="processes").drain(timeout=1)


def test_the_stop_signal_line_gives_a_grace_under_a_second_as_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "%.0f s": a 0.3 s grace was announced as 0 s.
    worker = Worker(Conveyor("memory://"), grace=0.3)
    with caplog.at_level(logging.INFO, logger="conveyor.worker"):
        worker._on_signal(signal.SIGTERM, 1)
    assert "running jobs have 0.3 s to finish" in caplog.text
