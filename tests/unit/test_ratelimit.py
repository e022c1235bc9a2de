"""Rate limits: parsing, the sliding window across "workers", per-key budgets; fake clock."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import threading

import pytest

from conveyor import ConfigurationError, Conveyor, InvalidName, JobStatus
from conveyor._clock import FakeClock
from conveyor._message import Message
from conveyor.ratelimit import Rate, acquire, parse_rate


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)  # a multiple of 60 and 3600: windows start here


@pytest.fixture
def app(clock: FakeClock) -> Conveyor:
    return Conveyor("memory://", clock=clock)


def msg(rate: str | None = "10/m", key: str | None = None, task: str = "t:send") -> Message:
    return Message(id="j", task=task, rate=rate, rate_key=key)


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/m", Rate(100, 60.0)),
        ("5/s", Rate(5, 1.0)),
        ("1000/h", Rate(1000, 3600.0)),
        ("10/30s", Rate(10, 30.0)),
        (" 3 / 2h ", Rate(3, 7200.0)),
    ],
)
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["100", "100/d", "0/m", "10/0s", "-1/s", "a/s", "1.5/s", ""])
def test_bad_rate_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match="rate"):
        parse_rate(text)


def test_no_rate_costs_nothing(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> int:
        raise AssertionError("touched the store")

    monkeypatch.setattr(app.broker.kv, "incr", boom)
    monkeypatch.setattr(app.broker.kv, "get", boom)
    assert acquire(app, msg(rate=None)) == 0.0


def test_idle_key_admits_a_burst_of_n_then_refuses(app: Conveyor, clock: FakeClock) -> None:
    m = msg("10/m")
    assert [acquire(app, m) for _ in range(10)] == [0.0] * 10
    wait = acquire(app, m)
    assert 0 < wait <= 60 + 6  # the window's end, plus the weighted carry-over
    clock.advance(wait)
    assert acquire(app, m) == 0.0


def test_steady_rate_is_held_over_many_windows(app: Conveyor, clock: FakeClock) -> None:
    """Greedy workers asking every 0.1 s start no more than ~n per period, and in no
    period-long window more than 2n (the documented worst case)."""
    m = msg("20/m")
    starts: list[float] = []
    for _ in range(6000):  # ten minutes
        if acquire(app, m) == 0.0:
            starts.append(clock.time())
        clock.advance(0.1)
    assert 180 <= len(starts) <= 210
    for i, t in enumerate(starts):
        in_window = sum(1 for s in starts[i:] if s < t + 60)
        assert in_window <= 40


@pytest.mark.parametrize("rate", ["1/m", "3/m", "10/m", "100/m"])
def test_a_job_that_asks_again_when_told_starts_n_times_a_period(
    app: Conveyor, clock: FakeClock, rate: str
) -> None:
    """Sustained demand gets the whole rate: n starts a period (plus the first burst of an
    idle key), at 1/m too, and its refusals (one each slot) do not push it further back."""
    m, n = msg(rate), parse_rate(rate).limit
    starts, end = 0, clock.time() + 3600
    while clock.time() < end:
        wait = acquire(app, m)
        if wait == 0.0:
            starts += 1
        else:
            clock.advance(wait)
    assert 60 * n <= starts <= 60 * n + n


def test_refusals_are_spread_and_give_their_slot_back(app: Conveyor) -> None:
    m = msg("2/s")
    assert acquire(app, m) == acquire(app, m) == 0.0
    waits = [acquire(app, m) for _ in range(4)]
    assert waits == sorted(waits) and len(set(waits)) == 4
    assert waits[1] - waits[0] == pytest.approx(0.5)  # one slot of a 2/s rate
    assert app.broker.kv.get("conveyor:rate:task:t:send:1:1700000000") == b"2"


def test_wait_returned_is_enough(app: Conveyor, clock: FakeClock) -> None:
    m = msg("5/10s")
    clock.advance(7.0)  # mid-window
    for _ in range(5):
        assert acquire(app, m) == 0.0
    wait = acquire(app, m)
    clock.advance(wait)
    assert acquire(app, m) == 0.0


def test_rate_key_budgets_are_independent(app: Conveyor) -> None:
    noisy, quiet = msg("3/m", key="tenant:a"), msg("3/m", key="tenant:b")
    assert [acquire(app, noisy) for _ in range(3)] == [0.0] * 3
    assert acquire(app, noisy) > 0
    assert acquire(app, quiet) == 0.0
    # One key is one budget, across tasks.
    assert acquire(app, msg("3/m", key="tenant:a", task="t:other")) > 0


def test_per_task_limit_is_shared_by_all_workers(app: Conveyor) -> None:
    admitted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            if acquire(app, msg("25/h")) == 0.0:
                with lock:
                    admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 25


def test_a_rate_is_a_frozen_value() -> None:
    rate = parse_rate("10/30s")
    assert (repr(rate), str(rate)) == ("Rate(limit=10, period=30.0)", "10/30s")
    assert rate == Rate(10, 30.0) != Rate(10, 31.0)
    assert hash(rate) == hash(Rate(10, 30.0))
    assert pickle.loads(pickle.dumps(rate)) == copy.copy(rate) == copy.deepcopy(rate) == rate
    with pytest.raises(dataclasses.FrozenInstanceError):
        rate.limit = 11
    with pytest.raises(dataclasses.FrozenInstanceError):
        del rate.period


def test_a_rate_subclass_is_named_in_its_repr_and_may_add_attributes() -> None:
    class Tagged(Rate):
        tag = ""

    tagged = Tagged(10, 30.0)
    assert repr(tagged) == f"{Tagged.__qualname__}(limit=10, period=30.0)"
    assert tagged != Rate(10, 30.0)
    tagged.tag = "billing"  # not a field: allowed, as on a frozen dataclass's subclass
    assert tagged.tag == "billing"
    with pytest.raises(dataclasses.FrozenInstanceError):
        tagged.limit = 11


def test_a_rate_key_too_long_for_its_counters_is_refused_at_enqueue(app: Conveyor) -> None:
    @app.task(name="limited", rate="10/s")
    def limited() -> None: ...

    with pytest.raises(InvalidName, match="rate_key"):
        limited.options(rate_key="k" * 505).delay()
    limited.options(rate_key="k" * 400).delay()


def test_a_job_whose_rate_key_the_store_refuses_is_dead_lettered_not_redelivered(
    app: Conveyor,
) -> None:
    """A job enqueued before its rate key was checked (an older producer, another broker's
    rules): the worker cannot count it, so it ends with a reason instead of coming back."""
    from conveyor._message import Envelope
    from conveyor.testing import drain

    @app.task(name="limited", rate="10/s")
    def limited() -> None: ...

    message = Message(id="j-long", task="limited", rate="10/s", rate_key="k" * 505)
    app.broker.enqueue([Envelope(message.id, message.queue, app.codec.encode_message(message))])
    drain(app, timeout=10)
    record = app.broker.get(["j-long"])[0]
    assert record is not None and record.status is JobStatus.DEAD
    reason = record.reason or ""
    assert "rate" in reason and "at most" in reason  # what to do, not the whole key
    assert "k" * 100 not in reason and len(reason) < 300


def test_a_rate_key_too_long_for_its_counters_is_refused_where_it_is_given(
    app: Conveyor,
) -> None:
    with pytest.raises(InvalidName, match="at most"):
        app.task(name="t1", rate="10/s", rate_key="k" * 480)

    @app.task(name="limited2", rate="10/s")
    def limited() -> None: ...

    with pytest.raises(InvalidName, match="at most"):
        limited.options(rate_key="k" * 480)  # before any enqueue

    @app.task(name="keyed", rate_key="k" * 480)  # no rate: nothing is counted
    def keyed() -> None: ...

    with pytest.raises(InvalidName, match="at most"):
        keyed.options(rate="1/m")
