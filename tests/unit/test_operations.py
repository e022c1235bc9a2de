"""Operating queues from the app: requeue with retries afresh, requeue_all, pause and resume
(a real ``Worker`` on the memory broker leaves a paused queue alone)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest

from conveyor import (
    ConfigurationError,
    Conveyor,
    InvalidName,
    JobCancelled,
    JobNotEnded,
    JobNotFound,
    JobStatus,
    Middleware,
    SerializationError,
    Task,
    TaskFailed,
)
from conveyor import _requeue as requeue_module
from conveyor._clock import FakeClock
from conveyor._delete import kept
from conveyor._message import Envelope, Message, new_job_id
from conveyor.brokers import Finish, LeaseState
from conveyor.testing import drain
from conveyor.worker import Worker
from conveyor.worker import _worker as worker_module

from .test_worker_lifecycle import background

RUNS: list[tuple[str, int]] = []  # (job id, attempt) of every run of `flaky`


@pytest.fixture
def app() -> Conveyor:
    RUNS.clear()
    app = Conveyor("memory://", clock=FakeClock())

    @app.task(name="flaky", retries=1, backoff=0.0)
    def flaky() -> None:
        from conveyor import current_job

        job = current_job()
        RUNS.append((job.id, job.attempt))
        raise ValueError("still broken")

    @app.task(name="fine")
    def fine(x: int) -> int:
        return x

    return app


def _failed(app: Conveyor, n: int) -> list[str]:
    """``n`` jobs of ``flaky`` that ran out of retries (attempts 0 and 1, then failed)."""
    jobs = [app.registry["flaky"].delay() for _ in range(n)]
    for _ in range(2):  # the first run, then the retry (its backoff: 0 s on a still clock)
        drain(app)
    assert {j.status for j in jobs} == {JobStatus.FAILED}
    return [j.id for j in jobs]


def _attempts(job_id: str) -> list[int]:
    return [attempt for i, attempt in RUNS if i == job_id]


def test_requeue_runs_a_failed_job_with_its_retries_afresh(app: Conveyor) -> None:
    [job_id] = _failed(app, 1)
    assert _attempts(job_id) == [0, 1]
    assert app.requeue([job_id]) == 1
    assert app.job(job_id).status is JobStatus.QUEUED
    for _ in range(2):
        drain(app)
    assert _attempts(job_id) == [0, 1, 0, 1]  # both runs again: the retry was not used up
    assert app.job(job_id).status is JobStatus.FAILED


def test_a_requeued_job_is_sent_afresh_from_the_moment_of_its_requeue() -> None:
    # Its enqueued_at stayed the first send's: conveyor_job_wait_seconds measured the hours a
    # dead letter sat, as if it had waited for a worker all that time.
    sent: list[float] = []

    class Sent(Middleware):
        def on_running(self, message: Message) -> None:
            sent.append(message.enqueued_at)

    clock = FakeClock()
    app = Conveyor("memory://", clock=clock, middleware=[Sent()])

    @app.task
    def broken() -> None:
        raise ValueError("broken")

    job = broken.delay()
    drain(app)
    clock.advance(3600)
    assert app.requeue([job.id]) == 1
    drain(app)
    assert sent == [clock.time() - 3600, clock.time()]


def test_a_handle_held_across_a_requeue_follows_the_new_run(app: Conveyor) -> None:
    fine = app.registry["fine"]
    job = fine.delay(7)
    job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=0)
    assert job.status is JobStatus.CANCELLED and job.done()

    assert app.requeue([job.id]) == 1
    assert job.status is JobStatus.QUEUED and not job.done()  # not the ended record it saw
    with pytest.raises(TimeoutError):
        job.result(timeout=0)
    drain(app)
    assert job.result(timeout=0) == 7 and job.exception(timeout=0) is None
    assert not job.cancel()  # it ended since: nothing to cancel


def test_requeue_takes_dead_and_cancelled_jobs_too(app: Conveyor) -> None:
    fine = app.registry["fine"]
    cancelled = fine.delay(1)
    cancelled.cancel()
    dead = fine.delay(2)
    [d] = app.broker.fetch(["default"], "w", 10, 30.0, 0.0)
    assert app.broker.finish([Finish(d, JobStatus.DEAD, reason="poison")]) == [True]
    assert app.requeue([cancelled.id, dead.id, cancelled.id]) == 2  # named twice, once back
    drain(app)
    assert (cancelled.result(timeout=0), dead.result(timeout=0)) == (1, 2)


def test_requeue_checks_every_id_before_requeueing_any(app: Conveyor) -> None:
    [failed] = _failed(app, 1)
    done = app.registry["fine"].delay(2)
    [d] = app.broker.fetch(["default"], "w", 10, 30.0, 0.0)
    assert app.broker.finish([Finish(d, JobStatus.SUCCEEDED, b"2")]) == [True]
    queued = app.registry["fine"].delay(1)

    with pytest.raises(JobNotFound, match="nope"):
        app.requeue([failed, "nope"])
    with pytest.raises(JobNotEnded, match=f"job {queued.id} is queued") as caught:
        app.requeue([failed, queued.id])
    assert (caught.value.job_id, caught.value.status) == (queued.id, JobStatus.QUEUED)
    assert "cancel it first" in str(caught.value)
    with pytest.raises(JobNotEnded, match="enqueue the task anew"):
        app.requeue([done.id])
    with pytest.raises(InvalidName):
        app.requeue(["two words"])
    assert app.job(failed).status is JobStatus.FAILED  # nothing was requeued
    assert app.requeue([]) == 0


def test_requeue_refuses_a_payload_this_app_cannot_decode(app: Conveyor) -> None:
    [failed] = _failed(app, 1)
    other = Conveyor(broker=app.broker, serializer="pickle", secret="not the workers'")
    with pytest.raises(SerializationError, match=f"cannot requeue job {failed}.*same serializer"):
        other.requeue([failed])
    assert app.job(failed).status is JobStatus.FAILED


def test_a_job_whose_key_is_held_stays_where_it_is(app: Conveyor) -> None:
    keyed = app.registry["flaky"].options(key="nightly")
    first = keyed.delay()
    for _ in range(2):
        drain(app)
    second = keyed.delay()  # the key is free again: first ended
    assert second.id != first.id
    assert app.requeue([first.id]) == 0  # second holds the key: first is not run twice
    assert app.job(first.id).status is JobStatus.FAILED


def test_requeue_says_which_jobs_it_left_and_why(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: `conveyor requeue ID` printed the ids given, whatever went back, and
    # requeue_all only logged the jobs it left (undecodable, or their key held), so
    # `conveyor requeue --all` exited 0 saying "requeued 0".
    keyed = app.registry["flaky"].options(key="nightly")
    first = keyed.delay()
    [other, fine] = _failed(app, 2)  # first fails with them
    garbage = new_job_id()  # a payload written by hand: no app can decode it
    app.broker.enqueue([Envelope(garbage, "junk", b"\x00 not a message")])
    [d] = app.broker.fetch(["junk"], "w", 10, 30.0, 0.0)
    assert app.broker.finish([Finish(d, JobStatus.FAILED, reason="junk")]) == [True]
    second = keyed.delay()  # pending: it holds the key
    done = requeue_module.requeue_ids(app, [first.id, other])
    assert done == requeue_module.Requeued([other], {first.id: second.id})
    assert requeue_module.requeue_all_counts(app, JobStatus.FAILED) == (1, 2)
    assert app.job(fine).status is JobStatus.QUEUED
    assert {app.job(i).status for i in (first.id, garbage)} == {JobStatus.FAILED}
    assert f"{first.id} was not requeued: its unique key is held by pending job" in caplog.text
    assert f"cannot requeue job {garbage}" in caplog.text


def test_requeue_puts_a_dependency_back_before_its_dependents(app: Conveyor) -> None:
    flaky, fine = app.registry["flaky"], app.registry["fine"]
    parent = flaky.delay()
    child = fine.options(depends_on=[parent.id]).delay(7)
    for _ in range(2):
        drain(app)
    # The child ran once its parent failed: DependencyFailed ends it failed.
    assert (parent.status, child.status) == (JobStatus.FAILED, JobStatus.FAILED)
    assert app.requeue([child.id, parent.id]) == 2  # the child named first
    assert app.job(child.id).status is JobStatus.SCHEDULED  # waits for its parent again
    assert app.job(parent.id).status is JobStatus.QUEUED
    for _ in range(2):
        drain(app)
    assert _attempts(parent.id) == [0, 1, 0, 1]
    assert child.status is JobStatus.FAILED  # once its parent failed again


def test_requeue_all_pages_through_every_failed_job(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(requeue_module, "PAGE", 3)
    failed = _failed(app, 7)
    garbage = new_job_id()  # a payload written by hand: no app can decode it
    app.broker.enqueue([Envelope(garbage, "default", b"\x00 not a message")])
    [d] = app.broker.fetch(["default"], "w", 10, 30.0, 0.0)
    assert app.broker.finish([Finish(d, JobStatus.FAILED, reason="junk")]) == [True]
    elsewhere = Conveyor(broker=app.broker)
    message = Message(id=new_job_id(), task="flaky", queue="other")
    app.broker.enqueue([Envelope(message.id, "other", elsewhere.codec.encode_message(message))])
    [d] = app.broker.fetch(["other"], "w", 10, 30.0, 0.0)
    assert app.broker.finish([Finish(d, JobStatus.FAILED, reason="x")]) == [True]

    assert app.requeue_all(JobStatus.DEAD) == 0
    assert app.requeue_all(JobStatus.FAILED, "default") == 7
    assert {app.job(i).status for i in failed} == {JobStatus.QUEUED}
    assert app.job(garbage).status is JobStatus.FAILED  # left where it was
    assert f"cannot requeue job {garbage}" in caplog.text
    assert app.job(message.id).status is JobStatus.FAILED  # another queue
    assert app.requeue_all(JobStatus.FAILED) == 1
    assert app.job(message.id).status is JobStatus.QUEUED
    with pytest.raises(ConfigurationError, match="FAILED, DEAD or CANCELLED"):
        app.requeue_all(JobStatus.SUCCEEDED)
    with pytest.raises(InvalidName):
        app.requeue_all(JobStatus.FAILED, "two words")


def test_requeue_all_takes_each_job_once_though_it_fails_again_meanwhile(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the pages were read afresh after each requeue, and a job that failed
    # again meanwhile (a busy worker) came back at the top of the newest-first listing and
    # was requeued again, and again: 12 failed jobs were requeued 1,437 times.
    monkeypatch.setattr(requeue_module, "PAGE", 3)
    failed = _failed(app, 7)
    requeued: list[str] = []
    requeue_page = requeue_module._requeue

    def then_failed_again(app: Conveyor, jobs: Any) -> Any:
        out = requeue_page(app, jobs)
        requeued.extend(j.id for j in jobs)
        taken = app.broker.fetch(["default"], "fast-worker", 100, 30.0, 0.0)
        app.broker.finish([Finish(d, JobStatus.FAILED, reason="again") for d in taken])
        return out

    monkeypatch.setattr(requeue_module, "_requeue", then_failed_again)
    assert app.requeue_all(JobStatus.FAILED) == 7
    assert sorted(requeued) == sorted(failed)  # each once
    assert {app.job(i).status for i in failed} == {JobStatus.FAILED}


def test_requeued_payload_keeps_everything_but_the_attempt(app: Conveyor) -> None:
    [job_id] = _failed(app, 1)
    before = app.codec.decode_message(app.broker.payload(job_id) or b"")
    app.requeue([job_id])
    after = app.codec.decode_message(app.broker.payload(job_id) or b"")
    assert (before.attempt, after.attempt) == (1, 0)
    assert msgspec.structs.replace(before, attempt=0) == after


# -- pause and resume with a real worker ----------------------------------------------------


def test_a_worker_leaves_a_paused_queue_alone_until_it_is_resumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Conveyor("memory://")
    ran: list[int] = []
    started = threading.Event()

    @app.task(queue="reports")
    def report(n: int) -> int:
        ran.append(n)
        return n

    @app.task(queue="default")
    def ping() -> str:
        started.set()
        return "pong"

    app.pause("reports")
    jobs = [report.delay(i) for i in range(5)]
    worker = Worker(app, ["reports", "default"], concurrency=2)
    with fetching_a_minute_long(worker, monkeypatch, ping):
        assert ping.delay().result(timeout=30) == "pong"  # the worker runs and fetches
        time.sleep(0.3)  # several fetches, and a block on the paused queue
        assert ran == []
        assert {j.status for j in jobs} == {JobStatus.QUEUED}
        resumed = time.monotonic()
        app.resume("reports")
        assert [j.result(timeout=30) for j in jobs] == list(range(5))
        assert time.monotonic() - resumed < 30  # woken, not at the end of its block
    assert app.broker.paused() == []


def test_a_worker_blocked_on_a_paused_queue_alone_wakes_at_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Conveyor("memory://")

    @app.task(queue="reports")
    def report(n: int) -> int:
        return n

    app.pause("reports")
    job = report.delay(1)
    with fetching_a_minute_long(Worker(app, ["reports"]), monkeypatch, report, 2):
        time.sleep(0.5)
        assert job.status is JobStatus.QUEUED
        resumed = time.monotonic()
        app.resume("reports")
        assert job.result(timeout=30) == 1
        assert time.monotonic() - resumed < 30  # woken, not at the end of its block


@contextmanager
def fetching_a_minute_long(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, wake: Task[..., Any], *args: Any
) -> Iterator[None]:
    """Run ``worker`` (as ``background`` does) with fetches that block for a minute instead
    of a second, so that a fetch a resume does not wake is told apart from one it does,
    however loaded the machine. On the way out fetches block a second again and a
    ``wake(*args)`` job ends the minute-long one, so the worker's stop is seen as usual."""
    monkeypatch.setattr(worker_module, "FETCH_BLOCK", 60.0)
    with background(worker):
        try:
            yield
        finally:
            monkeypatch.setattr(worker_module, "FETCH_BLOCK", 1.0)
            wake.delay(*args).result(timeout=30)


def test_drain_leaves_a_paused_queue_for_later(app: Conveyor) -> None:
    fine = app.registry["fine"]
    app.pause("default")
    job = fine.delay(3)
    report = drain(app, timeout=5)  # returns at once: nothing it may run
    assert (report.ran, report.paused) == (0, ("default",))
    assert job.status is JobStatus.QUEUED
    app.resume("default")
    report = drain(app, timeout=5)
    assert (report.ran, report.paused) == (1, ())
    assert job.result(timeout=0) == 3
    with pytest.raises(InvalidName):
        app.pause("a/b")


def test_delete_takes_ended_and_pending_jobs_and_leaves_a_running_one(app: Conveyor) -> None:
    fine = app.registry["fine"]
    [failed] = _failed(app, 1)
    queued, running = fine.delay(1), fine.delay(2)
    [d] = app.broker.fetch(["default"], "w", 1, 30.0, 0.0)
    assert d.id == queued.id
    with pytest.raises(JobNotFound, match="nothing was deleted"):
        app.delete([failed, "nope"])
    assert app.job(failed).status is JobStatus.FAILED  # nothing was deleted

    # queued.id is running (handed out first): its worker's live lease keeps it.
    assert app.delete([failed, running.id, queued.id, failed]) == {
        failed: JobStatus.FAILED,  # named twice, deleted once
        running.id: JobStatus.QUEUED,  # cancelled first, reported as it stood
        queued.id: None,
    }
    for gone in (failed, running.id):
        with pytest.raises(JobNotFound):
            app.job(gone)
    assert [e.id for e in app.broker.entries(JobStatus.FAILED, None, 10)] == []
    assert app.job(queued.id).status is JobStatus.RUNNING  # not even asked to stop
    assert app.broker.renew([d], 30.0) == [LeaseState.OK]
    why = kept(app, [queued.id])[queued.id]  # what the CLI and the dashboard say
    assert isinstance(why, JobNotEnded) and why.job_id == queued.id
    assert "live lease" in str(why) and "delete it once it ended" in str(why)
    assert app.broker.finish([Finish(d, JobStatus.SUCCEEDED, b"1")]) == [True]
    assert app.delete([queued.id]) == {queued.id: JobStatus.SUCCEEDED}
    assert isinstance(kept(app, [queued.id])[queued.id], JobNotFound)
    with pytest.raises(TypeError, match="list of job ids"):
        app.delete(queued.id)


def test_delete_takes_a_running_job_whose_worker_is_gone(app: Conveyor) -> None:
    job = app.registry["fine"].delay(1)
    [d] = app.broker.fetch(["default"], "w", 1, 30.0, 0.0)
    assert app.delete([job.id]) == {job.id: None}
    assert isinstance(app.clock, FakeClock)
    app.clock.advance(31)  # its worker died: the lease expired, and no fetch reclaimed it
    assert app.delete([job.id]) == {job.id: JobStatus.RUNNING}
    assert app.broker.finish([Finish(d, JobStatus.SUCCEEDED, b"1")]) == [False]  # fenced
    assert app.broker.get([job.id]) == [None]
    assert drain(app).ran == 0


def test_deleting_a_dead_workers_chain_step_fails_the_rest_of_its_chain(app: Conveyor) -> None:
    from conveyor.workflows import chain

    fine = app.registry["fine"]
    first, second, third = chain(fine.s(1), fine.s(), fine.s()).delay().steps
    [d] = app.broker.fetch(["default"], "w", 1, 30.0, 0.0)
    assert d.id == first
    assert isinstance(app.clock, FakeClock)
    app.clock.advance(31)  # its worker died
    assert app.delete([first]) == {first: JobStatus.RUNNING}
    drain(app)
    assert app.job(second).status is JobStatus.FAILED
    assert app.job(third).status is JobStatus.FAILED
    with pytest.raises(TaskFailed, match="deleted after its worker was gone"):
        app.job(second).result(timeout=0)


def test_deleting_a_pending_chain_step_fails_the_rest_of_its_chain(app: Conveyor) -> None:
    from conveyor.workflows import chain

    fine = app.registry["fine"]
    handle = chain(fine.s(1), fine.s(), fine.s()).delay()
    first, second, third = handle.steps
    assert app.delete([first]) == {first: JobStatus.QUEUED}  # cancelled first: the rest learns it
    drain(app)
    assert app.job(third).status is JobStatus.FAILED
    with pytest.raises(JobNotFound):
        app.job(first)
    assert app.job(second).status is JobStatus.FAILED
