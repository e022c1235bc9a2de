"""Every option of a task, a call and a ``Worker`` is checked for type and range where it
is given, by one rule per kind of value: a bad one is an ``InvalidOption`` (or, for names,
an ``InvalidName``) naming the option, the value and what to write, before anything is
written; a good one always makes a job a worker can decode."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor import (
    ConfigurationError,
    Conveyor,
    ConveyorError,
    CurrentJob,
    InvalidName,
    InvalidOption,
    ValidationError,
)
from conveyor._checks import MAX_SECONDS, MAX_TIMESTAMP
from conveyor._clock import FakeClock
from conveyor._message import Message
from conveyor._task import MAX_RETRIES
from conveyor.worker import Worker
from conveyor.worker._worker import MAX_CONCURRENCY, MAX_DELIVERIES, MIN_LEASE

SETTINGS = settings(max_examples=200, deadline=None)
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def app() -> Conveyor:
    return Conveyor("memory://", clock=FakeClock())


def _noop() -> None: ...


# -- bad and good values, by kind -----------------------------------------------------------

_NOT_A_NUMBER = (
    st.text(max_size=4)
    | st.booleans()  # True is not 1 here
    | st.lists(st.integers(), max_size=2)
    | st.dates()
    | st.just(object())
)
_NOT_FINITE = st.sampled_from([NAN, INF, -INF])


def bad_seconds(least: float, strictly: bool = False, none: bool = False) -> Any:
    below = st.floats(max_value=least, exclude_max=not strictly, allow_nan=False)
    found = (
        _NOT_A_NUMBER
        | _NOT_FINITE
        | below
        | st.floats(min_value=MAX_SECONDS, exclude_min=True, allow_infinity=False)
        | st.integers(min_value=MAX_SECONDS + 1)
        | st.integers(-(10**6), -1).map(lambda s: dt.timedelta(seconds=least + s))
    )
    return found | st.none() if none else found


def good_seconds(least: float, strictly: bool = False, none: bool = False) -> Any:
    numbers = st.floats(
        min_value=least, max_value=MAX_SECONDS, exclude_min=strictly, allow_nan=False
    ) | st.integers(min_value=math.ceil(least) + int(strictly), max_value=MAX_SECONDS)
    found = numbers | st.timedeltas(
        min_value=dt.timedelta(seconds=least + int(strictly)), max_value=dt.timedelta(days=3650)
    )
    return found | st.none() if none else found


def bad_whole(least: int, most: int, none: bool = False) -> Any:
    found = (
        st.integers(max_value=least - 1)
        | st.integers(min_value=most + 1)
        | st.floats()  # 3.0 is not 3 here either
        | st.booleans()
        | st.text(max_size=3)
    )
    return found | st.none() if none else found


def good_whole(least: int, most: int) -> Any:
    return st.integers(min_value=least, max_value=most)


# Not a name: empty, with a character outside letters, digits, '_', '.', '-', or dots alone
# (URL path steps: "_" and ".a" alone are names).
_BAD_NAME = st.text(max_size=3).filter(lambda s: not re.fullmatch(r"[A-Za-z0-9_.\-]+", s))
_BAD_NAME |= st.integers() | st.sampled_from([".", "..", "..."])
_ASIDE_KEY = st.text(alphabet="\x00\x07\x1f\x7f", min_size=1, max_size=3) | st.just("")

# option: (bad values, good values)
JOB_OPTIONS: dict[str, tuple[Any, Any]] = {
    "queue": (_BAD_NAME | st.none() | st.just("x" * 65), st.sampled_from(["default", "a-b.c_9"])),
    "priority": (bad_whole(0, 9, none=True), good_whole(0, 9)),
    "retries": (bad_whole(0, MAX_RETRIES, none=True), good_whole(0, MAX_RETRIES)),
    "backoff": (bad_seconds(0, none=True), good_seconds(0)),
    "timeout": (bad_seconds(0, strictly=True), good_seconds(0, strictly=True, none=True)),
    "result_ttl": (bad_seconds(1, none=True), good_seconds(1)),
    "delay": (bad_seconds(0), good_seconds(0, none=True)),
    "eta": (
        _NOT_A_NUMBER
        | _NOT_FINITE
        | st.floats(max_value=0, exclude_max=True)
        | st.floats(min_value=MAX_TIMESTAMP, exclude_min=True)
        | st.datetimes(timezones=st.none())  # naive: which zone would it be?
        # Out of a number's range (before 1970; past 9999 in UTC, given in UTC-5).
        | st.datetimes(max_value=dt.datetime(1969, 12, 31, 23), timezones=st.just(dt.UTC))
        | st.just(dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5)))),
        st.none()
        | st.floats(min_value=0, max_value=MAX_TIMESTAMP)
        | st.datetimes(
            min_value=dt.datetime(1971, 1, 1),
            max_value=dt.datetime(9999, 12, 31, 23, 59, 59),
            timezones=st.just(dt.UTC),
        ),
    ),
    "key": (_ASIDE_KEY | st.integers() | st.just("k" * 513), st.none() | st.just("user:42")),
    "job_id": (_BAD_NAME | st.just("a b") | st.just("j" * 129), st.none() | st.just("job-1.a_B")),
    "rate": (
        st.sampled_from(["fast", "10", "0/s", "1/0m", "5/d", "-1/s", ""])
        | st.integers()
        | st.lists(st.text(), max_size=1),
        st.none() | st.sampled_from(["100/m", "5/s", "10/30s", "1/h"]),
    ),
    "rate_key": (_ASIDE_KEY | st.integers(), st.none() | st.just("tenant:7")),
    "retry_on": (
        st.sampled_from(["ValueError", 42, [ValueError, "x"], [int], object(), None]),
        st.sampled_from([ValueError, (TimeoutError, OSError), [KeyError], ()]),
    ),
    "depends_on": (
        st.sampled_from([42, [1], [None], object(), ["ok-id", 3.5], "a b"]),
        st.sampled_from([None, (), "job-1", ["job-1", "job-2"]]),
    ),
    "allow_failed_dependencies": (
        st.sampled_from([0, 1, "yes", None, "True"]),
        st.booleans(),
    ),
}
ENTRY_POINTS: dict[str, Callable[[Conveyor, dict[str, Any]], object]] = {
    "@app.task(...)": lambda app, opts: app.task(**opts)(_noop),
    "task.options(...)": lambda app, opts: app.task(name="t.options")(_noop).options(**opts),
    "app.options(...)": lambda app, opts: app.options(**opts),
}


def _named_in(option: str, text: str) -> bool:
    """The message names the option: ``retry_on``, or as words (``job id``, ``queue name``)."""
    return option in text or option.replace("_", " ") in text


@SETTINGS
@given(data=st.data(), option=st.sampled_from(sorted(JOB_OPTIONS)))
def test_a_bad_job_option_is_refused_where_it_is_given_naming_it(
    app: Conveyor, data: st.DataObject, option: str
) -> None:
    value = data.draw(JOB_OPTIONS[option][0], label="value")
    entry = data.draw(st.sampled_from(sorted(ENTRY_POINTS)), label="entry")
    with pytest.raises(ConveyorError) as caught:
        ENTRY_POINTS[entry](app, {option: value})
    error = caught.value
    assert isinstance(error, InvalidOption | InvalidName), repr(error)
    assert isinstance(error, ValidationError)  # either catch works: nothing was written
    text = str(error)
    assert _named_in(option, text), text
    assert repr(value)[:20] in text or option in ("depends_on", "retry_on"), text
    assert "write" in text or "use" in text, text


@SETTINGS
@given(data=st.data(), option=st.sampled_from(sorted(JOB_OPTIONS)))
def test_a_good_job_option_makes_a_job_a_worker_can_decode(
    app: Conveyor, data: st.DataObject, option: str
) -> None:
    value = data.draw(JOB_OPTIONS[option][1], label="value")
    given = {option: value}
    if option == "rate_key" and value is not None:
        given["rate"] = "10/s"  # a rate_key counts against a rate: alone it is refused
    task = app.task(name="t.good")(_noop).options(**given)
    payload = app.envelope(task.s()).payload
    message = app.codec.decode_message(payload)
    assert isinstance(message, Message)
    assert message.backoff == task.opts.backoff and message.result_ttl == task.opts.result_ttl


def test_bool_is_not_a_number_for_any_option(app: Conveyor) -> None:
    for option in ("priority", "retries", "backoff", "timeout", "result_ttl", "delay", "eta"):
        with pytest.raises(InvalidOption, match=f"bad {option}=True"):
            app.options(**{option: True})


def test_backoff_nan_is_refused_at_once_not_dead_lettered_later(app: Conveyor) -> None:
    with pytest.raises(InvalidOption) as caught:
        app.task(backoff=NAN)(_noop)
    assert str(caught.value).startswith("bad backoff=nan: backoff takes a finite number of")
    assert "write backoff=2" in str(caught.value)


def test_a_negative_delay_is_refused_and_an_eta_in_the_past_runs_now(app: Conveyor) -> None:
    with pytest.raises(InvalidOption, match=r"bad delay=-5: .* 0 or more"):
        app.options(delay=-5)
    job = app.options(eta=dt.datetime(2001, 1, 1, tzinfo=dt.UTC)).enqueue(_noop)
    assert job.status == "queued"  # due already: not scheduled


def test_delay_and_eta_in_one_call_are_refused_and_a_later_one_wins(app: Conveyor) -> None:
    with pytest.raises(InvalidOption, match="give one of them"):
        app.options(delay=5, eta=1e9)
    task = app.task(name="t.later", delay=60)(_noop)
    assert (task.options(eta=2e9).opts.delay, task.options(eta=2e9).opts.eta) == (None, 2e9)
    back = task.options(eta=2e9).options(delay=5).opts
    assert (back.delay, back.eta) == (5.0, None)


def test_result_ttl_is_whole_seconds_rounded_up_and_timedeltas_count(app: Conveyor) -> None:
    assert app.options(result_ttl=1.2)._opts.result_ttl == 2
    assert app.options(result_ttl=dt.timedelta(hours=1))._opts.result_ttl == 3600


def test_a_bad_task_name_is_refused(app: Conveyor) -> None:
    for name in (42, ""):
        with pytest.raises(InvalidOption, match="task's name is a non-empty str"):
            app.task(name=name)(_noop)  # type: ignore[arg-type]


def test_an_app_with_a_bad_trust_max_payload_or_secret_is_refused() -> None:
    with pytest.raises(InvalidOption, match=r"bad trust='myapp': trust takes a list of names"):
        Conveyor("memory://", trust="myapp")
    for cap in (0, -1, 1.5, True, NAN, None):
        with pytest.raises(InvalidOption, match="bad max_payload="):
            Conveyor("memory://", max_payload=cap)  # type: ignore[arg-type]
    for empty in ("", b""):  # e.g. an unset environment variable: it would not sign at all
        with pytest.raises(InvalidOption, match="an empty secret would leave payloads unsigned"):
            Conveyor("memory://", secret=empty)
    with pytest.raises(InvalidOption, match=r"bad secret \(of type int\)") as caught:
        Conveyor("memory://", secret=987654321)  # type: ignore[arg-type]
    assert "987654321" not in str(caught.value)  # a secret is never shown


# -- the worker's settings, by the same rules -----------------------------------------------

WORKER_OPTIONS: dict[str, tuple[Any, Any]] = {
    "lease": (bad_seconds(MIN_LEASE), good_seconds(MIN_LEASE)),
    "grace": (bad_seconds(0), good_seconds(0)),
    "concurrency": (bad_whole(1, MAX_CONCURRENCY), good_whole(1, 64)),
    "max_deliveries": (bad_whole(1, MAX_DELIVERIES), good_whole(1, MAX_DELIVERIES)),
    "queues": (
        st.sampled_from(["default", [], (), None, [1], ["a b"], 5]),
        st.sampled_from([["default"], ("a", "b.c")]),
    ),
    "pool": (st.sampled_from(["fibers", "", None, 1, ["threads"]]), st.just("threads")),
    "trust": (st.sampled_from(["myapp", [1], None, 5]), st.sampled_from([[], ["a", "b,c"]])),
    "module": (st.sampled_from([1, ["m"], b"m"]), st.sampled_from([None, "myapp.tasks"])),
    "rand": (st.sampled_from([1, "random", 0.5]), st.sampled_from([None, lambda: 0.5])),
}


@SETTINGS
@given(data=st.data(), option=st.sampled_from(sorted(WORKER_OPTIONS)))
def test_a_bad_worker_setting_is_refused_by_the_constructor_naming_it(
    app: Conveyor, data: st.DataObject, option: str
) -> None:
    value = data.draw(WORKER_OPTIONS[option][0], label="value")
    with pytest.raises(ConveyorError) as caught:
        Worker(app, **{option: value})
    error = caught.value
    assert isinstance(error, ConfigurationError | InvalidName), repr(error)
    text = str(error)
    assert _named_in(option.rstrip("s"), text), text
    assert "write" in text or "use" in text, text


@SETTINGS
@given(data=st.data(), option=st.sampled_from(sorted(WORKER_OPTIONS)))
def test_a_good_worker_setting_is_kept(app: Conveyor, data: st.DataObject, option: str) -> None:
    value = data.draw(WORKER_OPTIONS[option][1], label="value")
    worker = Worker(app, **{option: value})
    if option in ("lease", "grace"):
        expected = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
        assert getattr(worker, option) == expected


# -- what a running task reports ------------------------------------------------------------


@SETTINGS
@given(
    value=st.floats().filter(lambda v: not 0.0 <= v <= 1.0)
    | st.booleans()
    | st.text(max_size=3)
    | st.none(),
    note=st.none() | st.text(max_size=5),
)
def test_bad_progress_is_an_invalid_option_and_reports_nothing(value: Any, note: Any) -> None:
    reported: list[tuple[float, str | None]] = []
    job = CurrentJob(
        job_id="j",
        task="t",
        queue="q",
        attempt=0,
        deliveries=1,
        report=lambda *a: reported.append(a),
    )
    with pytest.raises(InvalidOption, match=r"bad progress=.*: progress takes a fraction"):
        job.progress(value, note)
    with pytest.raises(InvalidOption, match="bad note=5: a progress note is a str or None"):
        job.progress(0.5, 5)  # type: ignore[arg-type]
    job.progress(1, note)
    assert reported == [(1.0, note)]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("timeout", [NAN, INF, -1, "5", True, [1]])
async def test_a_bad_result_timeout_is_refused_not_a_wait_forever(
    app: Conveyor, timeout: Any
) -> None:
    job = app.options(queue="unworked").enqueue(_noop)
    for wait in (job.result, job.exception):
        with pytest.raises(InvalidOption, match=r"bad timeout=.*: timeout takes .*seconds"):
            wait(timeout=timeout)
    with pytest.raises(InvalidOption, match="write timeout=30, or timeout=None"):
        await job.result_async(timeout=timeout)
    for fine in (0, 0.01, dt.timedelta(milliseconds=5)):
        with pytest.raises(TimeoutError):
            job.result(timeout=fine)  # type: ignore[arg-type]
