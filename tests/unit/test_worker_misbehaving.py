"""Tasks that misbehave end their own job, never the worker: hostile exceptions, values that
cannot be stored, results over the cap, coroutines nobody awaits, an async task that blocks
the loop, threads left running. Every pool (threads, async, processes), sync and async
tasks; the tasks come from ``tests/hostile.py`` and draw their misbehaviour from a spec.

Each pool runs with one slot: had a job cost the pool its thread (or its loop, or its child
reader), the next job would never run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import (
    ConfigurationError,
    Conveyor,
    InvalidOption,
)
from conveyor._codec import Codec
from conveyor._context import NOTE_CAP, CurrentJob
from conveyor._message import Outcome
from conveyor.worker import Worker
from conveyor.worker._attempt import Raised, Results, raised
from conveyor.worker._describe import MESSAGE_CAP, NAME_CAP, TRACEBACK_CAP, clip
from conveyor.worker._leftovers import let_go, lingering
from hostile import TASKS, exception_specs, failure, stored, unprintable

CAP = 4096  # the test app's max_result, small so that the boundary is cheap to cross
MODULE = "hostile_tasks"
APP = f"""
import logging
from conveyor import Conveyor

app = Conveyor("memory://", max_result={CAP})


def explode():
    raise SystemExit("cannot be rebuilt here")


class Exploding:  # pickles in a pool process; unpickling it in the worker raises
    def __reduce__(self):
        return (explode, ())


@app.task
def log_unreadable(x):
    logging.getLogger("hostile").warning("a record", extra={{"thing": Exploding()}})
    return x
"""
POOLS = ["threads", "async", "processes"]
# Stored outcomes of a failure stay under this, whatever the exception (UTF-8 can take four
# bytes a character, and JSON escapes some characters into six).
ERROR_BOUND = 6 * (MESSAGE_CAP + TRACEBACK_CAP + NAME_CAP) + 1024
SLOW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def tasks(write_module: Callable[[str, str], ModuleType]) -> ModuleType:
    return write_module(MODULE, APP + TASKS)


@pytest.fixture(scope="module", params=POOLS)
def pool(request: pytest.FixtureRequest, tasks: ModuleType) -> Iterator[str]:
    """A worker with one slot on each pool, running for the whole module."""
    name: str = request.param
    worker = Worker(tasks.app, pool=name, concurrency=1, module=MODULE, grace=0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield name
    finally:
        worker.stop(graceful=False)
        thread.join(20)
        assert not thread.is_alive(), "the worker did not stop"


def short(spec: dict[str, Any]) -> str:
    return "Q" * spec["qualname"] if spec.get("qualname") else "Hostile"


def check_description(spec: dict[str, Any], kind: str, message: str, traceback: str) -> None:
    """What any description of the exception ``spec`` builds must be."""
    name = short(spec)
    assert kind.endswith(name[: NAME_CAP // 2]) or "characters cut" in kind
    if spec.get("module") != "nonstr" and not spec.get("qualname"):
        assert kind == f"{MODULE}.Hostile"
    assert len(kind) <= NAME_CAP and len(message) <= MESSAGE_CAP
    assert len(traceback) <= TRACEBACK_CAP
    for text in (kind, message, traceback):
        assert type(text) is str
        text.encode("utf-8")  # no lone surrogate left
    how = spec.get("str")
    if unprintable(spec):
        assert message.startswith(f"<unprintable {name[:100]}"), message
        assert "(str() raised " in message
    elif how is not None and how[0] == "huge":
        assert message == "x" * how[1] or "characters cut" in message
    elif how is not None and how[0] == "surrogate":
        assert message == "bad \\ud800 text"
    elif how is not None and how[0] == "sly":
        assert message == "sly text"
    else:
        assert message == "plain message"
    assert "Traceback (most recent call last):" in traceback or "characters cut" in traceback


# -- describing an exception, in this process ---------------------------------------------


@settings(max_examples=300, deadline=None)
@given(spec=exception_specs())
def test_describing_any_exception_never_raises_and_keeps_it_bounded(
    tasks: ModuleType, spec: dict[str, Any]
) -> None:
    try:
        raise tasks.build(spec)
    except BaseException as exc:  # what a pool catches
        result = raised(exc)
    error = result.error
    check_description(spec, error.type, error.message, error.traceback)
    assert "builtins.BaseException" in result.types
    for codec in (Codec(), Codec("pickle", secret="s")):
        assert len(codec.encode_outcome(Outcome(error=error))) < ERROR_BOUND


def test_clip_keeps_head_and_tail_and_says_how_much_was_cut() -> None:
    text = "".join(f"line {i}\n" for i in range(100_000))
    clipped = clip(text, 10_000)
    assert len(clipped) <= 10_000
    assert clipped.startswith("line 0\nline 1\n") and clipped.endswith("line 99999\n")
    cut = len(text) - (10_000 - 64)
    assert f"\n[... {cut:,} characters cut ...]\n" in clipped
    assert clip("short", 10) == "short"


UNSTORABLE = [  # kind, n, what the failure says with JSON, and with pickle (None: stored)
    ("weird", 0, "Weird objects have no JSON form", None),
    ("tz", 0, "a datetime would arrive as an ISO 8601 str", None),
    ("hostile_tz", 0, "a datetime would arrive as an ISO 8601 str", None),
    ("self_ref", 0, "nested more than 200 levels deep", None),
    ("deep", 0, "nested more than 200 levels deep", "nested deeper than pickle can follow"),
    ("big", CAP, "-byte cap on results", "-byte cap on results"),
    ("coroutine", 0, "returned a coroutine instead of a value", "returned a coroutine"),
    ("generator", 0, "generator objects have no JSON form", "cannot pickle 'generator' object"),
    ("huge_int", 0, "an int of more than 4,300 digits", None),
    ("surrogate", 0, "which has no UTF-8 form", None),
]


@pytest.mark.parametrize(("kind", "n", "json", "pickle"), UNSTORABLE)
def test_a_value_that_cannot_be_stored_is_a_failure_not_an_exception(
    tasks: ModuleType, kind: str, n: int, json: str, pickle: str | None
) -> None:
    for codec, expected in ((Codec(), json), (Codec("pickle", secret="s"), pickle)):
        result = Results(codec, CAP).returned("hostile_tasks.give", tasks.value(kind, n))
        if expected is None:
            assert not isinstance(result, Raised), result
            continue
        assert isinstance(result, Raised)
        assert expected in result.error.message, result.error.message
        assert len(codec.encode_outcome(Outcome(error=result.error))) < ERROR_BOUND


def test_an_unawaited_coroutine_is_closed_so_it_never_warns(tasks: ModuleType) -> None:
    coroutine = tasks.later()
    Results(Codec(), CAP).returned("t", coroutine)
    assert coroutine.cr_frame is None  # closed


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1", None])
def test_max_result_must_be_a_positive_number_of_bytes(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_result is a size in bytes"):
        Conveyor("memory://", max_result=bad)  # type: ignore[arg-type]


def test_max_result_defaults_to_one_mebibyte() -> None:
    assert Conveyor("memory://").max_result == 1024 * 1024


# -- through every pool ------------------------------------------------------------------


@SLOW
@given(spec=exception_specs(), is_async=st.booleans())
def test_a_hostile_exception_fails_its_job_and_the_slot_lives_on(
    tasks: ModuleType, pool: str, spec: dict[str, Any], is_async: bool
) -> None:
    job = (tasks.afail if is_async else tasks.fail).delay(spec)
    error = failure(job)
    check_description(spec, error.remote_type, error.remote_message, error.remote_traceback)
    assert ("in afail" if is_async else "in fail") in error.remote_traceback or (
        "characters cut" in error.remote_traceback
    )
    assert stored(tasks.app, job) < ERROR_BOUND
    assert tasks.fine.delay(1).result(timeout=30) == 1


@pytest.mark.parametrize("base", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_task_raising_a_base_exception_fails_its_job_and_the_worker_goes_on(
    tasks: ModuleType, pool: str, base: str, is_async: bool
) -> None:
    job = (tasks.afail if is_async else tasks.fail).delay({"base": base})
    error = failure(job)
    assert error.remote_message == "plain message"
    assert error.remote_type == f"{MODULE}.Hostile"
    assert [tasks.fine.delay(i).result(timeout=30) for i in range(3)] == [0, 1, 2]


UNSTORED_IN_A_WORKER = [  # kind, the failure's type, and what its message says
    ("weird", "SerializationError", "cannot be stored as its result: cannot encode result"),
    ("tz", "SerializationError", "a datetime would arrive as an ISO 8601 str"),
    ("hostile_tz", "SerializationError", "a datetime would arrive as an ISO 8601 str"),
    ("huge_int", "SerializationError", "an int of more than 4,300 digits"),
    ("self_ref", "SerializationError", "nested more than 200 levels deep"),
    ("deep", "SerializationError", "nested more than 200 levels deep"),
    ("surrogate", "SerializationError", "which has no UTF-8 form"),
    ("generator", "SerializationError", "generator objects have no JSON form"),
    ("coroutine", "TypeError", "returned a coroutine instead of a value"),
    ("big", "ResultTooLarge", f"encodes to {CAP + 13:,} bytes, over the {CAP:,}-byte cap"),
]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("case", UNSTORED_IN_A_WORKER, ids=[c[0] for c in UNSTORED_IN_A_WORKER])
def test_a_result_that_cannot_be_stored_fails_its_job(
    tasks: ModuleType, pool: str, is_async: bool, case: tuple[str, str, str]
) -> None:
    kind, remote_type, expected = case
    job = (tasks.agive if is_async else tasks.give).delay(kind, CAP + 1)
    error = failure(job)
    assert error.remote_type.endswith(f".{remote_type}")
    assert expected in error.remote_message, error.remote_message
    assert stored(tasks.app, job) < ERROR_BOUND
    assert tasks.fine.delay(2).result(timeout=30) == 2


def test_a_list_subclass_whose_python_methods_raise_fails_its_job_and_the_slot_lives(
    tasks: ModuleType, pool: str
) -> None:
    # JSON refuses a list subclass (it would arrive as a plain list): its methods are
    # never called, the job fails with the reason, and the one slot runs the next job.
    error = failure(tasks.give.delay("hostile_list"))
    assert error.remote_type == "conveyor._errors.SerializationError"
    assert "would arrive as a plain list" in error.remote_message
    assert tasks.fine.delay(2).result(timeout=30) == 2


def test_an_oversized_result_names_its_size_the_cap_and_how_to_raise_it(
    tasks: ModuleType, pool: str
) -> None:
    job = tasks.give.delay("big", 10 * CAP)
    error = failure(job)
    assert error.remote_type == "conveyor._errors.ResultTooLarge"
    assert error.remote_message == (
        f"the task's result encodes to {10 * CAP + 12:,} bytes, over the {CAP:,}-byte cap "
        "on results; store large results elsewhere (a file, object store or app.store) and "
        "return their key, or raise Conveyor(max_result=...)"
    )
    assert stored(tasks.app, job) < 10 * CAP  # the result itself was not stored


@settings(max_examples=15, deadline=None)
@given(n=st.integers(CAP - 40, CAP + 40))
def test_results_up_to_the_cap_are_stored_and_one_byte_more_is_not(
    tasks: ModuleType, pool: str, n: int
) -> None:
    job = tasks.give.delay("big", n)
    size = len(msgspec.json.encode({"value": "x" * n}))
    if size <= CAP:
        assert job.result(timeout=30) == "x" * n
    else:
        assert failure(job).remote_type == "conveyor._errors.ResultTooLarge"


def test_a_traceback_over_its_cap_keeps_its_head_and_tail(tasks: ModuleType, pool: str) -> None:
    spec = {"base": "ValueError", "str": ["huge", 3 * TRACEBACK_CAP]}
    error = failure(tasks.fail.delay(spec))
    tb = error.remote_traceback
    assert len(tb) <= TRACEBACK_CAP
    assert tb.startswith("Traceback (most recent call last):")
    assert "in fail" in tb and "characters cut ...]" in tb
    assert tb.endswith("xxxx\n")
    assert len(error.remote_message) <= MESSAGE_CAP and "characters cut" in error.remote_message


def test_a_deep_recursion_fails_with_its_traceback(tasks: ModuleType, pool: str) -> None:
    error = failure(tasks.recurse.delay(0))
    assert error.remote_type == "builtins.RecursionError"
    assert "in recurse" in error.remote_traceback
    assert len(error.remote_traceback) <= TRACEBACK_CAP


def test_a_log_record_the_worker_cannot_rebuild_costs_nothing(
    tasks: ModuleType, pool: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert tasks.log_unreadable.delay(7).result(timeout=30) == 7
    assert tasks.fine.delay(3).result(timeout=30) == 3
    if pool == "processes":
        assert "sent a message that cannot be read here" in caplog.text
        assert "cannot be rebuilt here" in caplog.text


# -- progress notes -----------------------------------------------------------------------


def test_a_progress_note_is_a_short_exact_string() -> None:
    reported: list[tuple[float, str | None]] = []
    job = CurrentJob(job_id="j", task="t", queue="q", attempt=0, deliveries=1,
                     report=lambda v, n: reported.append((v, n)))  # fmt: skip

    class Sly(str):
        def __str__(self) -> str:
            raise RuntimeError("no")

    job.progress(1, Sly("y" * (3 * NOTE_CAP)))
    ((value, note),) = reported
    assert type(value) is float and value == 1.0
    assert type(note) is str and note == "y" * NOTE_CAP
    with pytest.raises(InvalidOption, match="a progress note is a str or None"):
        job.progress(0.5, 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match=r"from 0\.0 to 1\.0"):
        job.progress(float("nan"))


# -- an async task that blocks the event loop ---------------------------------------------


@pytest.mark.parametrize("pool_name", ["threads", "async"])
def test_an_async_task_that_blocks_the_loop_is_named_and_the_others_run_after(
    tasks: ModuleType,
    pool_name: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("conveyor.worker._loop.BEAT", 0.05)
    monkeypatch.setattr("conveyor.worker._loop.BLOCKED", 0.5)
    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    worker = Worker(tasks.app, ["solo"], pool=pool_name, concurrency=8)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:  # on a queue of their own: the module's pool worker does not take them
        blocker = tasks.block.options(queue="solo").delay(1.5)
        time.sleep(0.1)
        others = [tasks.agive.options(queue="solo").delay("number", i) for i in range(3)]
        sync = tasks.fine.options(queue="solo").delay("sync")  # a pool thread runs it now
        assert sync.result(timeout=30) == "sync"
        assert blocker.result(timeout=30) == 1.5
        assert [j.result(timeout=30) for j in others] == [0, 1, 2]
    finally:
        worker.stop(graceful=False)
        thread.join(10)
    (line,) = [r for r in caplog.records if "has blocked the event loop" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert f"job {blocker.id} ({MODULE}:block) has blocked the event loop for" in line.getMessage()
    assert "asyncio.to_thread" in line.getMessage()


# -- threads a task left running ----------------------------------------------------------


def test_threads_left_running_are_named_and_the_exit_does_not_wait_for_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    before = threading.enumerate()
    release = threading.Event()
    kept = threading.Thread(target=release.wait, name="left-behind")
    daemon = threading.Thread(target=release.wait, name="a-daemon", daemon=True)
    kept.start()
    daemon.start()
    try:
        assert lingering(before) == [kept]
        let_go(before, "the test")
        assert kept.daemon  # the interpreter no longer waits for it at exit
        assert lingering(before) == []
        if hasattr(threading, "_shutdown_locks"):
            assert kept._tstate_lock not in threading._shutdown_locks  # type: ignore[attr-defined]
    finally:
        release.set()
        kept.join(5)
        daemon.join(5)
    assert (
        "1 thread(s) that tasks started are still running: 'left-behind'; the test exits "
        "without waiting for them" in caplog.text
    )


def test_a_thread_pool_a_task_left_running_is_let_go_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    before = threading.enumerate()
    release = threading.Event()
    executor = ThreadPoolExecutor(1, thread_name_prefix="forgotten")
    executor.submit(release.wait)
    try:
        (left,) = lingering(before)
        let_go(before, "the test")
        assert lingering(before) == []
        from concurrent.futures import thread as futures_thread

        assert left not in futures_thread._threads_queues  # type: ignore[attr-defined]
    finally:
        release.set()
        executor.shutdown()
    assert "'forgotten_0'" in caplog.text


# -- a failure to record an outcome ---------------------------------------------------------


def test_an_outcome_that_cannot_be_recorded_lets_the_job_go_to_run_again(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.worker._finisher import Finisher

    calls: list[str] = []
    put = Finisher.put

    def once_broken(*args: Any, **kwargs: Any) -> None:
        calls.append("put")
        if len(calls) == 1:
            raise RuntimeError("a bug of ours")
        put(*args, **kwargs)

    monkeypatch.setattr(Finisher, "put", once_broken)
    caplog.set_level(logging.ERROR, logger="conveyor.worker")
    worker = Worker(tasks.app, ["solo"], concurrency=1, lease=0.5)
    job = tasks.fine.options(queue="solo").delay("again")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:  # not held (and renewed) for ever: its lease lapses and it is delivered again
        assert job.result(timeout=30) == "again"
    finally:
        worker.stop(graceful=False)
        thread.join(10)
    assert len(calls) == 2
    assert "cannot record its outcome; it returns when its lease expires" in caplog.text
