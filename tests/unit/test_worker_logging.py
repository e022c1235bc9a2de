"""What a worker logs, on the memory broker: a task's own lines carry its job (thread pool,
event loop and pool processes alike), and each outcome is logged once at the level an
operator expects: a retry at INFO, a failure at WARNING with its traceback, a dead letter at
ERROR with its reason."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from types import ModuleType

import pytest

from conveyor import Conveyor, JobDead, TaskFailed
from conveyor._message import Envelope, Message, new_job_id
from conveyor.worker import Worker, drain

task_log = logging.getLogger("tests.tasks")


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("memory://")


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def job_of(record: logging.LogRecord) -> tuple[object, ...]:
    return tuple(getattr(record, f, "missing") for f in ("job_id", "task", "queue", "attempt"))


@pytest.mark.parametrize("pool", ["threads", "async"])
def test_a_task_line_carries_its_job(
    app: Conveyor, caplog: pytest.LogCaptureFixture, pool: str
) -> None:
    @app.task(queue="images")
    def resize(name: str) -> str:
        task_log.info("resizing %s", name)
        return name

    @app.task(queue="images")
    async def upload(name: str) -> str:
        task_log.info("uploading %s", name)
        return name

    caplog.set_level(logging.INFO)
    first, second = resize.delay("a.png"), upload.delay("b.png")
    worker = Worker(app, ["images"], pool=pool, grace=0.0)  # puts the filter on the handlers
    task_log.info("not in a job")
    worker.drain(timeout=20)
    assert first.result(timeout=30) == "a.png" and second.result(timeout=30) == "b.png"
    by_message = {r.getMessage(): r for r in lines(caplog, "tests.tasks")}
    assert job_of(by_message["resizing a.png"]) == (first.id, resize.name, "images", 0)
    assert job_of(by_message["uploading b.png"]) == (second.id, upload.name, "images", 0)
    assert job_of(by_message["not in a job"]) == (None, None, None, None)


def test_a_retry_logs_at_info_and_the_failure_at_warning_with_its_traceback(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(retries=1, backoff=0.0)
    def flaky() -> None:
        task_log.info("trying")
        raise ValueError("no luck")

    caplog.set_level(logging.INFO)
    job = flaky.delay()
    drain(app, timeout=20)  # the retry is scheduled (for now): a second drain runs it
    drain(app, timeout=20)
    with pytest.raises(TaskFailed):
        job.result(timeout=30)
    worker_lines = lines(caplog, "conveyor.worker")
    retry, failed = [r for r in worker_lines if r.levelno >= logging.INFO]
    assert retry.levelno == logging.INFO
    assert "failed, retry 1 of 1" in retry.getMessage()
    assert retry.getMessage().endswith("builtins.ValueError: no luck")
    assert job_of(retry) == (job.id, flaky.name, "default", 0)
    assert failed.levelno == logging.WARNING
    assert f"job {job.id} ({flaky.name}) failed after " in failed.getMessage()
    assert failed.getMessage().endswith(" ms: builtins.ValueError: no luck")
    assert job_of(failed) == (job.id, flaky.name, "default", 1)
    assert failed.exc_text is not None and 'raise ValueError("no luck")' in failed.exc_text
    assert failed.exc_text.endswith("ValueError: no luck")
    assert "ValueError: no luck" in caplog.text  # any formatter writes the traceback
    tries = [job_of(r)[3] for r in lines(caplog, "tests.tasks")]
    assert tries == [0, 1]


def test_a_task_without_retries_fails_at_warning(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    def broken() -> None:
        raise KeyError("gone")

    caplog.set_level(logging.INFO, logger="conveyor")
    job = broken.delay()
    drain(app, timeout=20)
    (failed,) = [r for r in lines(caplog, "conveyor.worker") if r.levelno > logging.INFO]
    assert failed.levelno == logging.WARNING and job_of(failed)[0] == job.id
    assert "KeyError" in (failed.exc_text or "")


def test_a_dead_letter_logs_at_error_with_its_reason(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    job_id = new_job_id()
    payload = app.codec.encode_message(Message(id=job_id, task="no_such_task", queue="mail"))
    app.broker.enqueue([Envelope(job_id, "mail", payload)])
    drain(app, ["mail"], timeout=20)
    with pytest.raises(JobDead):
        app.job(job_id).result(timeout=30)
    (dead,) = [r for r in lines(caplog, "conveyor.worker") if r.levelno > logging.INFO]
    assert dead.levelno == logging.ERROR
    assert f"job {job_id} (no_such_task) was dead-lettered" in dead.getMessage()
    assert "unknown task 'no_such_task'" in dead.getMessage()
    assert job_of(dead) == (job_id, "no_such_task", "mail", 0)


def test_an_undecodable_job_is_dead_with_what_is_known(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="conveyor")
    job_id = new_job_id()
    app.broker.enqueue([Envelope(job_id, "default", b"\xff not a job")])
    drain(app, timeout=20)
    (dead,) = lines(caplog, "conveyor.worker")
    assert "undecodable payload" in dead.getMessage()
    assert job_of(dead) == (job_id, None, "default", None)


def test_successes_log_at_debug_only(app: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    @app.task
    def fine() -> int:
        return 1

    caplog.set_level(logging.INFO, logger="conveyor")
    fine.delay()
    drain(app, timeout=20)
    assert lines(caplog, "conveyor.worker") == []
    caplog.set_level(logging.DEBUG, logger="conveyor")
    job = fine.delay()
    drain(app, timeout=20)
    (done,) = [r for r in lines(caplog, "conveyor.worker") if "succeeded" in r.getMessage()]
    assert done.levelno == logging.DEBUG and job_of(done)[0] == job.id


# -- pool processes --------------------------------------------------------------------------

TASKS = """
import logging, os, warnings
from conveyor import Conveyor

app = Conveyor("memory://")
log = logging.getLogger(__name__)
log.warning("imported in %s", os.getpid())


@app.task(queue="cpu")
def crunch(n: int) -> int:
    log.info("crunching %d in %s", n, os.getpid())
    warnings.warn("crunching is deprecated", UserWarning, stacklevel=1)
    logging.getLogger("thirdparty").debug("below the parent's level: never sent")
    return n * 2


@app.task
def explode() -> None:
    try:
        {}["missing"]
    except KeyError:
        log.exception("cannot crunch")
    raise RuntimeError("exploded")


@app.task
async def wait(n: int) -> int:
    log.info("awaiting %d", n)
    return n
"""


@pytest.fixture(scope="module")
def chatty(write_module: Callable[[str, str], ModuleType]) -> ModuleType:
    return write_module("chatty_tasks", TASKS)


def test_pool_process_lines_reach_the_parent_with_their_job(
    chatty: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    crunch, explode, wait = chatty.crunch.delay(21), chatty.explode.delay(), chatty.wait.delay(3)
    worker = Worker(chatty.app, ["cpu", "default"], pool="processes", module="chatty_tasks",
                    concurrency=2)  # fmt: skip
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert crunch.result(timeout=30) == 42 and wait.result(timeout=30) == 3
        with pytest.raises(TaskFailed):
            explode.result(timeout=30)
    finally:
        worker.stop(graceful=False)
        thread.join(15)
    ours = {r.getMessage().split(" in ")[0]: r for r in lines(caplog, "chatty_tasks")}
    assert ours["imported"].process != os.getpid()  # the import in each child, sent up
    assert job_of(ours["imported"]) == (None, None, None, None)
    line = ours["crunching 21"]
    assert line.process != os.getpid() and line.levelno == logging.INFO
    assert job_of(line) == (crunch.id, chatty.crunch.name, "cpu", 0)
    assert job_of(ours["awaiting 3"]) == (wait.id, chatty.wait.name, "default", 0)
    logged = ours["cannot crunch"]
    assert logged.levelno == logging.ERROR and job_of(logged)[0] == explode.id
    assert logged.exc_text is not None and logged.exc_text.endswith("KeyError: 'missing'")
    assert not lines(caplog, "thirdparty")
    (warned,) = lines(caplog, "py.warnings")  # a warning too, not a stray line on stderr
    assert "crunching is deprecated" in warned.getMessage() and job_of(warned)[0] == crunch.id
    failed = [r for r in lines(caplog, "conveyor.worker") if r.levelno == logging.WARNING]
    assert [job_of(r)[0] for r in failed] == [explode.id]
    assert (failed[0].exc_text or "").endswith("RuntimeError: exploded")
