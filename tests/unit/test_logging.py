"""``conveyor._logging``: the text and JSON formats, the job filter, ``configure`` and the
trip of a pool process's records to its parent. No worker, no sockets."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import logging.config
import os
import pickle
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import conveyor
from conveyor import ConfigurationError, CurrentJob, SoftTimeLimit
from conveyor import _logging as logs
from conveyor._context import set_current_job

TOUCHED = ("conveyor", "conveyor.worker", "redis", "myapp", "myapp.tasks", "tests.logging")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure changes process-wide state: put it all back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in TOUCHED}
    setup = logs._setup.level, set(logs._setup.packages)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, number in levels.items():
            logging.getLogger(name).setLevel(number)
        logs._setup.level, logs._setup.packages = setup[0], setup[1]
        logging.captureWarnings(False)


@pytest.fixture
def in_job() -> Iterator[CurrentJob]:
    """What the worker does around a run: the job in the context variable."""
    job = CurrentJob(
        job_id="01jobid", task="myapp.tasks:resize", queue="images", attempt=2, deliveries=3,
        report=lambda value, note: None,
    )  # fmt: skip
    set_current_job(job)
    try:
        yield job
    finally:
        set_current_job(None)


def record(
    msg: str = "resized %s",
    *args: object,
    level: int = logging.INFO,
    exc_info: Any = None,
    extra: dict[str, object] | None = None,
) -> logging.LogRecord:
    """A record as ``logging.getLogger("myapp.tasks").info(...)`` makes it, filtered."""
    logger = logging.getLogger("myapp.tasks")
    made = logger.makeRecord(
        logger.name,
        level,
        __file__,
        1,
        msg,
        args or ("a.png",) * ("%s" in msg),
        exc_info,
        extra=extra,
    )
    logs.JobContext().filter(made)
    return made


def failure() -> Any:
    try:
        raise ValueError("bad pixel")
    except ValueError:
        return sys.exc_info()


# -- the filter ------------------------------------------------------------------------------


def test_the_filter_stamps_the_running_job(in_job: CurrentJob) -> None:
    made = record()
    assert (made.job_id, made.task, made.queue, made.attempt) == (  # type: ignore[attr-defined]
        "01jobid", "myapp.tasks:resize", "images", 2
    )  # fmt: skip


def test_outside_a_job_the_fields_are_none_so_a_format_can_name_them() -> None:
    made = record()
    assert [getattr(made, f) for f in logs.FIELDS] == [None] * 4
    line = logging.Formatter("%(job_id)s %(task)s %(message)s").format(made)
    assert line == "None None resized a.png"


def test_the_filter_keeps_fields_the_record_has(in_job: CurrentJob) -> None:
    made = record(extra={"task": "mine", "job_id": "other"})
    assert (made.job_id, made.task, made.queue) == ("other", "mine", "images")  # type: ignore[attr-defined]


def test_each_thread_sees_its_own_job(in_job: CurrentJob) -> None:
    seen: list[logging.LogRecord] = []
    thread = threading.Thread(target=lambda: seen.append(record()))
    thread.start()
    thread.join()
    assert seen[0].job_id is None  # type: ignore[attr-defined]
    assert record().job_id == "01jobid"  # type: ignore[attr-defined]


def test_logging_filter_is_public_and_is_what_dict_config_builds(in_job: CurrentJob) -> None:
    # What dictConfig does for {"filters": {"job": {"()": "conveyor.logging_filter"}}}
    # (dictConfig itself would close every handler of this process, pytest's too).
    made = logging.config.DictConfigurator({}).configure_filter({"()": "conveyor.logging_filter"})
    assert isinstance(made, logging.Filter) and isinstance(
        conveyor.logging_filter(), logging.Filter
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(made)
    handler.setFormatter(logging.Formatter("%(job_id)s %(task)s %(queue)s: %(message)s"))
    logger = logging.getLogger("tests.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("hello")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "01jobid myapp.tasks:resize images: hello\n"


# -- the formats -----------------------------------------------------------------------------

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_json_lines_carry_time_level_logger_message_and_the_job(in_job: CurrentJob) -> None:
    made = record()
    line = json.loads(logs.JsonFormatter().format(made))
    assert line == {
        "time": line["time"],
        "level": "INFO",
        "logger": "myapp.tasks",
        "message": "resized a.png",
        "job_id": "01jobid",
        "task": "myapp.tasks:resize",
        "queue": "images",
        "attempt": 2,
    }
    assert ISO.match(line["time"])
    stamped = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(stamped.timestamp() - made.created) < 0.002  # UTC, to the millisecond


def test_json_outside_a_job_has_no_job_fields() -> None:
    line = json.loads(logs.JsonFormatter().format(record()))
    assert set(line) == {"time", "level", "logger", "message"}


def test_json_carries_the_traceback_and_extra_fields(in_job: CurrentJob) -> None:
    made = record("cannot resize", level=logging.ERROR, exc_info=failure(), extra={"px": 3})
    text = logs.JsonFormatter().format(made)
    assert "\n" not in text  # one line, whatever the traceback holds
    line = json.loads(text)
    assert line["level"] == "ERROR" and line["px"] == 3
    assert line["traceback"].startswith("Traceback (most recent call last):")
    assert line["traceback"].endswith("ValueError: bad pixel")


def test_json_writes_what_it_cannot_encode_as_text() -> None:
    line = json.loads(logs.JsonFormatter().format(record(extra={"where": object()})))
    assert line["where"].startswith("<object object at")


def test_text_lines_name_the_job_when_in_one(in_job: CurrentJob) -> None:
    text = logs.TextFormatter().format(record())
    stamp, rest = text.split(" ", 1)
    assert ISO.match(stamp)
    assert rest == "INFO myapp.tasks [job=01jobid task=myapp.tasks:resize]: resized a.png"


def test_text_lines_outside_a_job_and_with_a_traceback() -> None:
    text = logs.TextFormatter().format(record("failed", exc_info=failure(), level=logging.WARNING))
    first, *more = text.splitlines()
    assert first.split(" ", 1)[1] == "WARNING myapp.tasks: failed"
    assert more[0] == "Traceback (most recent call last):" and more[-1] == "ValueError: bad pixel"


# -- configure -------------------------------------------------------------------------------


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logs._Handler)]


@pytest.mark.parametrize(
    ("level", "number"),
    [("INFO", 20), ("debug", 10), (" Warning ", 30), ("15", 15), (40, 40), ("CRITICAL", 50)],
)
def test_levels_by_name_any_case_or_number(level: str | int, number: int) -> None:
    logs.configure(level, "text")
    assert logging.getLogger("conveyor").level == number


@pytest.mark.parametrize("level", ["LOUD", "", "0", 0, 51, -1, True, "WARN ING", "NOTSET"])
def test_a_bad_level_says_what_to_write_and_changes_nothing(level: str | int) -> None:
    before = list(logging.getLogger().handlers)
    with pytest.raises(ConfigurationError) as info:
        logs.configure(level, "json")
    assert f"unknown log level {level!r}" in str(info.value)
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in str(info.value)
    assert "a number from 1 to 50" in str(info.value)
    assert logging.getLogger().handlers == before


@pytest.mark.parametrize("fmt", ["xml", "", "JSONL"])
def test_a_bad_format_says_what_to_write(fmt: str) -> None:
    with pytest.raises(ConfigurationError, match=f"unknown log format {fmt!r}: write text or json"):
        logs.configure("INFO", fmt)
    assert not ours()


def test_configure_twice_replaces_its_handler(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text")
    logs.configure("DEBUG", "JSON")
    assert len(ours()) == 1
    logging.getLogger("conveyor.worker").debug("hello")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(x)["message"] for x in lines] == ["hello"]


def _configured_on(path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``configure`` with stderr a real file at ``path`` (a descriptor, as a worker's is)."""
    stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("INFO", "text")
    return stream


def _held_write(
    monkeypatch: pytest.MonkeyPatch, marker: bytes
) -> tuple[threading.Event, threading.Event]:
    """The handler's write of a line holding ``marker`` waits (``writing`` set) until
    ``go_on`` is set; every other write goes through."""
    writing, go_on = threading.Event(), threading.Event()
    real = logs._write

    def write(raw: Any, data: bytes) -> int | None:
        if marker in data:
            writing.set()
            go_on.wait(10)
        return real(raw, data)

    monkeypatch.setattr(logs, "_write", write)
    return writing, go_on


def test_a_slow_write_of_a_line_does_not_hold_up_another_threads_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job threads that log must not queue behind one another's writes (the handler's
    lock held across a write that lets the GIL go made them run one by one)."""
    stream = _configured_on(tmp_path / "err", monkeypatch)
    writing, go_on = _held_write(monkeypatch, b"first")
    log = logging.getLogger("conveyor.worker")
    first = threading.Thread(target=log.info, args=("first",))
    second = threading.Thread(target=log.info, args=("second",))
    try:
        first.start()
        assert writing.wait(10)
        second.start()
        second.join(5)
        assert not second.is_alive()  # written while the first line's write waits
    finally:
        go_on.set()
        first.join(10)
        second.join(10)
        stream.close()
    lines = (tmp_path / "err").read_text().splitlines()
    assert [x.split(": ", 1)[1] for x in lines] == ["second", "first"]


def test_lines_from_many_threads_stay_whole(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _configured_on(tmp_path / "err", monkeypatch)
    log = logging.getLogger("conveyor.worker")
    long = "x" * 5000  # longer than a pipe takes at once: written under the lock

    def lines(t: int) -> None:
        for i in range(200):
            log.info("thread %d line %d %s", t, i, long if i % 50 == 0 else "é")

    threads = [threading.Thread(target=lines, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stream.close()
    written = (tmp_path / "err").read_text(encoding="utf-8").splitlines()
    assert len(written) == 8 * 200
    found = {tuple(x.split(": ", 1)[1].split(" ")[1:4:2]) for x in written}
    assert found == {(str(t), str(i)) for t in range(8) for i in range(200)}
    assert all(x.endswith((long, "é")) for x in written)


def test_lines_longer_than_a_pipe_takes_at_once_are_written_one_at_a_time(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe that fills up may take a long write in pieces: two tracebacks written at once
    could then be mixed, so those are written under the lock."""
    stream = _configured_on(tmp_path / "err", monkeypatch)
    real, busy, most = logs._write, [0], [0]
    lock = threading.Lock()

    def write(fd: int, data: bytes) -> int:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.005)  # lets the GIL go, as a write does
        try:
            return real(fd, data)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(logs, "_write", write)
    log = logging.getLogger("conveyor.worker")
    long = "t" * logs._ATOMIC
    threads = [
        threading.Thread(target=lambda: [log.info("%s", long) for _ in range(5)]) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stream.close()
    assert most[0] == 1
    assert len((tmp_path / "err").read_text().splitlines()) == 20


@pytest.mark.parametrize("first", ["long", "short"])
def test_a_long_line_is_never_written_beside_another(
    first: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe that fills up takes a line longer than PIPE_BUF in pieces, and another
    writer's line could land between them: a long line waits for the lines being written,
    and the lines after it wait for it."""
    stream = _configured_on(tmp_path / "err", monkeypatch)
    real, log = logs._write, logging.getLogger("conveyor.worker")
    writing, go_on, started = threading.Event(), threading.Event(), []
    texts = {"long": "l" * logs._ATOMIC, "short": "s"}

    def write(fd: int, data: bytes) -> int:
        started.append("long" if len(data) > logs._ATOMIC else "short")
        if len(started) == 1:
            writing.set()
            go_on.wait(10)
        return real(fd, data)

    monkeypatch.setattr(logs, "_write", write)
    second = "short" if first == "long" else "long"
    one = threading.Thread(target=log.info, args=(texts[first],))
    other = threading.Thread(target=log.info, args=(texts[second],))
    try:
        one.start()
        assert writing.wait(10)
        other.start()
        other.join(0.3)
        assert other.is_alive() and started == [first]  # waits for the first's write
    finally:
        go_on.set()
        one.join(10)
        other.join(10)
        stream.close()
    assert started == [first, second]
    lines = (tmp_path / "err").read_text().splitlines()
    assert [x.split(": ", 1)[1] for x in lines] == [texts[first], texts[second]]


@pytest.mark.parametrize(("outer", "inner"), [("s", "L"), ("L", "s"), ("s", "s"), ("L", "L")])
def test_a_line_logged_in_the_middle_of_a_write_is_written_too(
    outer: str, inner: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler that logs runs in the middle of the interrupted thread's write: its
    line must not wait for that write, which waits for it."""
    stream = _configured_on(tmp_path / "err", monkeypatch)
    real, log = logs._write, logging.getLogger("conveyor.worker")
    size = {"s": 1, "L": logs._ATOMIC}

    (handler,) = ours()
    after: list[object] = []

    def write(fd: Any, data: bytes) -> int:
        if b"outer" in data:
            log.warning("inner %s", inner * size[inner])  # what the handler would log
            # The outer write still counts for what the other threads wait for.
            after.append(
                threading.get_ident() in handler._writing if outer == "s" else handler._long
            )  # type: ignore[attr-defined]
        return real(fd, data)

    monkeypatch.setattr(logs, "_write", write)
    thread = threading.Thread(target=log.info, args=("outer %s", outer * size[outer]))
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    stream.close()
    words = [x.split(": ", 1)[1].split(" ")[0] for x in (tmp_path / "err").read_text().splitlines()]
    assert words == ["inner", "outer"]
    assert after == [True]


def test_a_line_goes_to_the_stream_the_handler_has_when_it_writes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream swapped (and the old one closed) while a line is formatted: the line goes to
    the new one, not to a descriptor number another file may hold by then."""
    old = _configured_on(tmp_path / "a", monkeypatch)
    (handler,) = ours()
    new = open(tmp_path / "b", "w", encoding="utf-8")  # noqa: SIM115 - closed below

    class Swapping(logs.TextFormatter):
        def format(self, record: logging.LogRecord) -> str:
            if handler.setStream(new) is old:  # type: ignore[attr-defined]
                old.close()
            return super().format(record)

    handler.setFormatter(Swapping())
    logging.getLogger("conveyor.worker").info("moved")
    new.close()
    assert (tmp_path / "b").read_text().endswith(": moved\n")
    assert (tmp_path / "a").read_text() == ""


def test_a_time_limit_that_lands_in_a_write_reaches_the_job(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _configured_on(tmp_path / "err", monkeypatch)

    def write(raw: Any, data: bytes) -> int:
        raise SoftTimeLimit()

    monkeypatch.setattr(logs, "_write", write)
    try:
        with pytest.raises(SoftTimeLimit):
            logging.getLogger("conveyor.worker").info("cut short")
    finally:
        stream.close()


def test_a_line_stopped_by_an_exception_in_its_write_stops_no_other_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker stops a job by raising an exception in its thread, wherever the thread
    is: in the middle of a log line's write, say."""

    class Stop(BaseException):
        pass

    stream = _configured_on(tmp_path / "err", monkeypatch)
    real, log = logs._write, logging.getLogger("conveyor.worker")

    def write(fd: int, data: bytes) -> int:
        if b"stopped" in data:
            raise Stop
        return real(fd, data)

    def stopped(text: str) -> None:
        with contextlib.suppress(Stop):
            log.info("stopped %s", text)

    monkeypatch.setattr(logs, "_write", write)
    for text in ("s", "L" * logs._ATOMIC):
        stopped(text)
    for text in ("after", "L" * logs._ATOMIC):
        thread = threading.Thread(target=log.info, args=(text,))
        thread.start()
        thread.join(5)
        assert not thread.is_alive()
    stream.close()
    assert len((tmp_path / "err").read_text().splitlines()) == 2


def test_a_child_forked_while_a_line_is_written_can_log(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _configured_on(tmp_path / "err", monkeypatch)
    real, log = logs._write, logging.getLogger("conveyor.worker")
    writing, go_on = _held_write(monkeypatch, b"parent")
    thread = threading.Thread(target=log.info, args=("parent",))
    thread.start()
    try:
        assert writing.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: the parent's writing thread is not here
            logs._write = real
            log.error("child %s", "t" * logs._ATOMIC)
            os._exit(0)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the child hung"
    finally:
        go_on.set()
        thread.join(10)
        stream.close()
    assert sorted(x.split(": ", 1)[1][:5] for x in (tmp_path / "err").read_text().splitlines()) == [
        "child",
        "paren",
    ]


def test_a_stream_over_something_else_than_a_file_is_written_through(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressing text stream has a descriptor (its file's): a line written there
    directly would bypass the compression."""
    stream = gzip.open(tmp_path / "err.gz", "wt", encoding="utf-8")  # noqa: SIM115 - closed below
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure("INFO", "text")
    logging.getLogger("conveyor.worker").info("squeezed")
    stream.close()
    with gzip.open(tmp_path / "err.gz", "rt", encoding="utf-8") as f:
        assert f.read().endswith(": squeezed\n")


def test_a_line_to_a_stream_without_a_descriptor_is_written_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "text")  # capsys's stderr has no file descriptor
    logging.getLogger("conveyor.worker").info("captured")
    assert capsys.readouterr().err.endswith(": captured\n")


def test_python_warnings_become_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "json")
    warnings.warn("old api", DeprecationWarning, stacklevel=1)
    (line,) = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert line["logger"] == "py.warnings" and "DeprecationWarning: old api" in line["message"]


def test_third_party_loggers_stay_at_warning_while_conveyor_debugs() -> None:
    logs.configure("debug", "text")
    assert logging.getLogger("conveyor.worker").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("redis").isEnabledFor(logging.INFO)
    assert logging.getLogger("redis").isEnabledFor(logging.WARNING)
    logs.configure("ERROR", "text")  # a level above WARNING quietens everything
    assert not logging.getLogger("redis").isEnabledFor(logging.WARNING)


def test_the_packages_a_worker_runs_log_at_the_chosen_level() -> None:
    logs.attach(["myapp"])  # before configure: the command loads the app first, or after
    logs.configure("INFO", "json")
    assert logging.getLogger("myapp.tasks").isEnabledFor(logging.INFO)
    assert not logging.getLogger("myapp.tasks").isEnabledFor(logging.DEBUG)
    logs._setup.packages.discard("myapp")
    logging.getLogger("myapp").setLevel(logging.NOTSET)
    logs.attach(["myapp"])  # after configure
    assert logging.getLogger("myapp.tasks").isEnabledFor(logging.INFO)


def test_attach_without_configure_keeps_your_levels_and_adds_the_filter_once() -> None:
    handler = logging.NullHandler()
    logging.getLogger().addHandler(handler)
    logs.attach(["myapp"])
    logs.attach(["myapp"])
    assert logging.getLogger("myapp").level == logging.NOTSET
    assert len([f for f in handler.filters if isinstance(f, logs.JobContext)]) == 1


# -- pool processes --------------------------------------------------------------------------


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_pool_process_record_is_written_by_the_parent_with_its_job(
    in_job: CurrentJob,
) -> None:
    sent: list[bytes] = []
    forward = logs._Forward(lambda message: sent.append(pickle.dumps(message)))
    made = logging.getLogger("tests.logging").makeRecord(
        "tests.logging", logging.ERROR, __file__, 1, "%s failed", ("resize",), failure()
    )
    forward.handle(made)  # in the child: stamped there, sent over the socket
    set_current_job(None)  # the parent's reader thread runs no job

    keep = Keep()
    logging.getLogger("tests.logging").addHandler(keep)
    logging.getLogger("tests.logging").setLevel(logging.INFO)
    try:
        kind, fields = pickle.loads(sent[0])
        logs.replay(fields)
    finally:
        logging.getLogger("tests.logging").removeHandler(keep)
    assert kind == "log"
    (got,) = keep.records
    logs.JobContext().filter(got)  # the parent's own filter keeps the child's fields
    assert got.getMessage() == "resize failed"
    assert (got.job_id, got.attempt) == ("01jobid", 2)  # type: ignore[attr-defined]
    text = logs.TextFormatter().format(got)
    assert "[job=01jobid task=myapp.tasks:resize]: resize failed" in text
    assert text.endswith("ValueError: bad pixel")


def test_an_extra_that_does_not_pickle_is_sent_as_its_repr() -> None:
    sent: list[Any] = []
    forward = logs._Forward(lambda message: sent.append(pickle.loads(pickle.dumps(message))))
    forward.handle(record(extra={"lock": threading.Lock()}))
    ((_, fields),) = sent
    assert fields["lock"].startswith("<unlocked _thread.lock")


def test_a_parent_level_above_the_record_drops_it() -> None:
    keep = Keep()
    logger = logging.getLogger("tests.logging")
    logger.addHandler(keep)
    logger.setLevel(logging.WARNING)
    try:
        made = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "quiet", (), None)
        logs.replay(logs.portable(made))
    finally:
        logger.removeHandler(keep)
    assert keep.records == []


def test_levels_copies_what_configure_set() -> None:
    logs.attach(["myapp"])
    logs.configure("DEBUG", "text")
    copied = logs.levels()
    assert copied[""] == logging.WARNING
    assert copied["conveyor"] == copied["myapp"] == logging.DEBUG
