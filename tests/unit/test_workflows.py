"""chain, group and chord through the public API, run by a small driver that makes the two
hook calls the worker makes (``short_circuit`` before running, ``advance`` before recording).
"""

from __future__ import annotations

import random
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brokers import params
from conveyor import (
    ConfigurationError,
    Conveyor,
    JobCancelled,
    JobStatus,
    PayloadTooLarge,
    TaskFailed,
    ValidationError,
)
from conveyor._clock import FakeClock
from conveyor._message import Delivery, Message, Outcome, RemoteError
from conveyor.brokers._port import Finish
from conveyor.testing import drain
from conveyor.workflows import COLLECT, advance, chain, chord, group, short_circuit


class Driver:
    """A stand-in worker: fetch, short_circuit, run, advance, finish. ``order`` picks which of
    the fetched jobs run first, to shuffle completion order."""

    def __init__(self, app: Conveyor, order: Callable[[list[Delivery]], None] | None = None):
        self.app = app
        self.order = order
        self.ran: list[str] = []  # task names actually called
        self.lock = threading.Lock()

    def outcome(self, msg: Message) -> tuple[JobStatus, bytes]:
        outcome = short_circuit(self.app, msg)
        if outcome is None:
            with self.lock:
                self.ran.append(msg.task)
            try:
                value = self.app.registry[msg.task].fn(*msg.args, **msg.kwargs)
                outcome = Outcome(value=value)
            except Exception as exc:
                tb = "".join(traceback.format_exception(exc))
                t = type(exc)
                outcome = Outcome(
                    error=RemoteError(f"{t.__module__}.{t.__qualname__}", str(exc), tb)
                )
        status = JobStatus.SUCCEEDED if outcome.error is None else JobStatus.FAILED
        return status, self.app.codec.encode_outcome(outcome)

    def step(self, d: Delivery) -> None:
        msg = self.app.codec.decode_message(d.payload)
        status, result = self.outcome(msg)
        advance(self.app, msg, status, result)
        assert self.app.broker.finish([Finish(d, status, result)]) == [True]

    def drain(self, queues: tuple[str, ...] = ("default",)) -> int:
        n = 0
        while ds := self.app.broker.fetch(list(queues), "driver", 50, 30, 0):
            if self.order is not None:
                self.order(ds)
            for d in ds:
                self.step(d)
                n += 1
        return n

    def drain_threads(self, threads: int) -> None:
        def loop() -> None:
            while ds := self.app.broker.fetch(["default"], "driver", 1, 30, 0.05):
                for d in ds:
                    self.step(d)

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


LINKS: dict[int, set[str]] = {}  # per app: the workflow keys written to its store


@pytest.fixture(params=params(embedded=True))
def app(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Conveyor:
    app = Conveyor(request.param.target(request, tmp_path).url, clock=FakeClock())
    kv, real_set, keys = app.broker.kv, app.broker.kv.set, set[str]()
    LINKS[id(app)] = keys

    def recording_set(
        key: str, value: bytes, ttl: float | None = None, *, nx: bool = False
    ) -> bool:
        if key.startswith("conveyor:wf:"):
            keys.add(key)
        return real_set(key, value, ttl, nx=nx)

    monkeypatch.setattr(kv, "set", recording_set)

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="total")
    def total(xs: list[int], bonus: int = 0) -> int:
        return sum(xs) + bonus

    @app.task(name="boom")
    def boom(*args: Any) -> None:
        raise ValueError(f"boom {args}")

    @app.task(name="ident")
    def ident(x: Any) -> Any:
        return x

    return app


def t(app: Conveyor, name: str) -> Any:
    return app.registry[name]


def settled(app: Conveyor) -> bool:
    """Nothing queued, scheduled (parked) or running: the workflow did not leave a step behind."""
    return all(s.queued + s.scheduled + s.running == 0 for s in app.broker.stats())


def no_links_left(app: Conveyor) -> bool:
    keys = LINKS[id(app)]
    return bool(keys) and all(app.broker.kv.get(k) is None for k in keys)


def test_chain_passes_each_result_on(app: Conveyor) -> None:
    add, mul = t(app, "add"), t(app, "mul")
    job = chain(add.s(1, 2), mul.s(10), add.s(y=5)).delay()
    assert job.status is JobStatus.SCHEDULED  # the last step waits, parked
    Driver(app).drain()
    assert job.result(timeout=0) == 35  # ((1 + 2) * 10) + 5
    assert settled(app) and no_links_left(app)


def test_every_step_is_written_in_one_batch(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = app.broker.enqueue

    def spy(envelopes: Any, events: Any = ()) -> list[str]:
        calls.append(len(envelopes))
        return real(envelopes, events)

    monkeypatch.setattr(app.broker, "enqueue", spy)
    add = t(app, "add")
    chord(group(add.s(i, i) for i in range(5)), chain(t(app, "total").s(), add.s(1))).delay()
    assert calls == [7]
    stats = {s.queue: s for s in app.broker.stats()}["default"]
    assert (stats.queued, stats.scheduled) == (5, 2)


def test_a_failed_step_fails_the_rest_without_running_them(app: Conveyor) -> None:
    add, boom = t(app, "add"), t(app, "boom")
    driver = Driver(app)
    job = chain(add.s(1, 1), boom.s(), add.s(1), add.s(2)).delay()
    driver.drain()
    with pytest.raises(TaskFailed) as info:
        job.result(timeout=0)
    assert info.value.remote_type.endswith("ValueError") and "boom (2,)" in str(info.value)
    assert "in workflow step" in info.value.remote_traceback
    assert driver.ran == ["add", "boom"]
    assert settled(app) and no_links_left(app)


def test_group_returns_results_in_order_whatever_finishes_first(app: Conveyor) -> None:
    mul = t(app, "mul")
    job = group(mul.s(i, i) for i in range(9)).delay()
    Driver(app, order=lambda ds: random.Random(7).shuffle(ds)).drain()
    assert job.result(timeout=0) == [i * i for i in range(9)]
    assert settled(app) and no_links_left(app)
    assert COLLECT in app.registry


def test_group_takes_arguments_too(app: Conveyor) -> None:
    add = t(app, "add")
    job = group(add.s(1, 1), add.s(2, 2)).delay()
    Driver(app).drain()
    assert job.result(timeout=0) == [2, 4]


def test_chord_callback_gets_the_list(app: Conveyor) -> None:
    add, total = t(app, "add"), t(app, "total")
    job = chord([add.s(i, 1) for i in range(4)], total.s(bonus=100)).delay()
    Driver(app, order=lambda ds: ds.reverse()).drain()
    assert job.result(timeout=0) == 1 + 2 + 3 + 4 + 100


def test_a_failed_member_fails_the_callback(app: Conveyor) -> None:
    add, boom, total = t(app, "add"), t(app, "boom"), t(app, "total")
    driver = Driver(app)
    job = chord(group(add.s(1, 1), boom.s("x"), add.s(2, 2)), total.s()).delay()
    driver.drain()
    with pytest.raises(TaskFailed, match="boom"):
        job.result(timeout=0)
    assert "total" not in driver.ran
    assert settled(app) and no_links_left(app)


def test_the_callback_fails_as_soon_as_a_member_fails(app: Conveyor) -> None:
    boom, add, total = t(app, "boom"), t(app, "add"), t(app, "total")
    job = chord(group(boom.s(), add.s(1, 1)), total.s()).delay()
    driver = Driver(app)
    (first,) = app.broker.fetch(["default"], "d", 1, 30, 0)  # boom: the other member waits
    driver.step(first)
    driver.drain()  # the failed callback and the other member, in whichever order
    assert job.status is JobStatus.FAILED and "total" not in driver.ran


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        # a group inside a chain: each member gets the previous result
        (lambda a, m, tot: chain(a.s(1, 1), group(m.s(10), m.s(100)), tot.s()), 220),
        # chains inside a chord
        (lambda a, m, tot: chord([chain(a.s(1, 1), m.s(3)), a.s(0, 4)], tot.s()), 10),
        # a group of groups and chains
        (
            lambda a, m, tot: group(group(a.s(1, 1), a.s(2, 2)), chain(a.s(1, 2), m.s(2))),
            [[2, 4], 6],
        ),
        # a chord inside a chain, followed by more steps
        (lambda a, m, tot: chain(a.s(1, 1), chord([m.s(2), m.s(3)], tot.s()), a.s(5)), 15),
        # a chain as the callback, a chord as a member
        (
            lambda a, m, tot: chord(
                [chord([a.s(1, 1), a.s(1, 2)], tot.s()), a.s(0, 1)], chain(tot.s(), m.s(2))
            ),
            12,
        ),
        # a group as a chord's callback: each member gets the list
        (lambda a, m, tot: chord([a.s(1, 1), a.s(1, 2)], group(tot.s(), tot.s(bonus=1))), [5, 6]),
        # chains in chains
        (lambda a, m, tot: chain(chain(a.s(1, 1), m.s(2)), chain(a.s(1), m.s(3))), 15),
    ],
)
def test_nested_workflows_complete(app: Conveyor, build: Callable[..., Any], expected: Any) -> None:
    workflow = build(t(app, "add"), t(app, "mul"), t(app, "total"))
    job = workflow.delay()
    Driver(app, order=lambda ds: random.Random(3).shuffle(ds)).drain()
    assert job.result(timeout=0) == expected
    assert settled(app) and no_links_left(app)


@pytest.mark.parametrize(
    "build",
    [
        lambda a, b: chain(a.s(1, 1), group(b.s(), a.s(1)), a.s(1, 2)),
        lambda a, b: chord([chain(a.s(1, 1), b.s()), a.s(1, 1)], chain(a.s(1), a.s(2))),
        lambda a, b: group(group(a.s(1, 1), chain(b.s(), a.s(1, 1))), a.s(1, 1)),
        lambda a, b: chain(chord([a.s(1, 1)], b.s()), group(a.s(1), a.s(2)), a.s(1)),
    ],
)
def test_a_failure_anywhere_ends_a_nested_workflow(
    app: Conveyor, build: Callable[..., Any]
) -> None:
    job = build(t(app, "add"), t(app, "boom")).delay()
    Driver(app).drain()
    with pytest.raises(TaskFailed, match="boom"):
        job.result(timeout=0)
    assert settled(app) and no_links_left(app)


def test_empty_groups(app: Conveyor) -> None:
    total, ident = t(app, "total"), t(app, "ident")
    jobs = [
        group([], app=app).delay(),
        chord(group(), total.s(bonus=3)).delay(),
        chain(group([]), ident.s()).delay(),
    ]
    Driver(app).drain()
    assert [j.result(timeout=0) for j in jobs] == [[], 3, []]
    with pytest.raises(ConfigurationError, match="empty group"):
        chain(ident.s(1), group([])).delay()
    with pytest.raises(ConfigurationError, match="app=app"):
        group().delay()


def test_a_big_chord_across_threads_calls_back_once(app: Conveyor) -> None:
    add, total = t(app, "add"), t(app, "total")
    job = chord([add.s(i, 0) for i in range(60)], total.s()).delay()
    driver = Driver(app)
    driver.drain_threads(8)
    assert job.result(timeout=0) == sum(range(60))
    assert driver.ran.count("total") == 1
    assert settled(app) and no_links_left(app)


def test_advance_twice_is_harmless(app: Conveyor) -> None:
    """A redelivered step (its worker died between advance and finish) advances again."""
    add, total = t(app, "add"), t(app, "total")
    chain_job = chain(add.s(1, 1), add.s(1)).delay()
    chord_job = chord([add.s(1, 0), add.s(2, 0)], total.s()).delay()
    driver = Driver(app)
    (d1, d2, d3) = app.broker.fetch(["default"], "d", 3, 30, 0)
    for d in (d1, d2):  # run, advance, and "crash" before finishing: advance again later
        msg = app.codec.decode_message(d.payload)
        status, result = driver.outcome(msg)
        advance(app, msg, status, result)
    driver.step(d1)
    driver.step(d2)
    driver.step(d3)
    driver.drain()
    assert chain_job.result(timeout=0) == 3
    assert chord_job.result(timeout=0) == 3
    assert driver.ran.count("total") == 1 and settled(app)


def test_a_result_too_large_to_pass_on_fails_the_next_step(app: Conveyor) -> None:
    small = Conveyor("memory://", max_payload=2_000)
    ident: Any = small.task(name="ident")(lambda x: x)
    small.task(name="big")(lambda: "x" * 5_000)
    job = chain(small.registry["big"].s(), ident.s()).delay()
    Driver(small).drain()
    with pytest.raises(TaskFailed) as info:
        job.result(timeout=0)
    assert info.value.remote_type.endswith(PayloadTooLarge.__qualname__)
    assert settled(small)


def test_a_huge_failure_still_reaches_the_end(app: Conveyor) -> None:
    small = Conveyor("memory://", max_payload=1_500)

    @small.task(name="loud")
    def loud(x: str) -> None:
        raise RuntimeError("x" * 5_000)

    ident: Any = small.task(name="ident")(lambda x: x)
    job = chain(loud.s("a" * 1_000), ident.s("b" * 1_000), ident.s()).delay()
    Driver(small).drain()
    with pytest.raises(TaskFailed, match="RuntimeError: xxx"):
        job.result(timeout=0)
    assert settled(small)


@pytest.mark.parametrize(
    ("status", "remote"),
    [(JobStatus.DEAD, "JobDead"), (JobStatus.CANCELLED, "JobCancelled")],
)
def test_a_dead_or_cancelled_step_fails_the_rest(
    app: Conveyor, status: JobStatus, remote: str
) -> None:
    add = t(app, "add")
    job = chain(add.s(1, 1), add.s(1)).delay()
    (d,) = app.broker.fetch(["default"], "d", 1, 30, 0)
    result = app.codec.encode_outcome(Outcome(reason="the worker gave up"))
    advance(app, app.codec.decode_message(d.payload), status, result)
    app.broker.finish([Finish(d, status, result)])
    Driver(app).drain()
    with pytest.raises(TaskFailed, match="gave up") as info:
        job.result(timeout=0)
    assert info.value.remote_type.endswith(remote)


def test_a_step_dead_lettered_for_its_deliveries_fails_the_rest(app: Conveyor) -> None:
    """Workers died running the first step, one after another (a lease ran out each
    time): the worker that gets it next dead-letters it unrun, and the chain's later step
    fails as after any dead step, instead of waiting for ever."""
    add = t(app, "add")
    job = chain(add.s(1, 1), add.s(1)).delay()
    clock = app.clock
    assert isinstance(clock, FakeClock)
    for _ in range(5):  # the worker's max_deliveries
        (d,) = app.broker.fetch(["default"], "dying", 1, 30, 0)
        assert d.id == job.steps[0]
        clock.advance(31)
    drain(app)
    assert statuses(app, job.steps) == [JobStatus.DEAD, JobStatus.FAILED]
    with pytest.raises(TaskFailed, match="delivered 6 times") as info:
        job.result(timeout=0)
    assert info.value.remote_type.endswith("JobDead")
    assert settled(app) and no_links_left(app)


def test_a_step_cancelled_before_its_inputs_came_is_not_requeued(app: Conveyor) -> None:
    """Requeued, a step cancelled while it waited for the step before it would run without
    that step's result: it is refused (alone) and skipped (by status); the first step,
    which has all it needs, goes back."""
    add = t(app, "add")
    job = chain(add.s(1, 1), add.s(1), add.s(2)).delay()
    job.cancel()
    first, second, _ = job.steps
    with pytest.raises(ValidationError, match="Send the workflow again"):
        app.requeue([first, second])
    assert statuses(app, job.steps) == [JobStatus.CANCELLED] * 3  # nothing was requeued
    assert app.requeue_all(JobStatus.CANCELLED) == 1
    drain(app)
    assert statuses(app, job.steps) == [JobStatus.SUCCEEDED, *[JobStatus.CANCELLED] * 2]


def test_a_step_cancelled_after_its_inputs_came_is_requeued_with_them(app: Conveyor) -> None:
    add = t(app, "add")
    job = chain(add.s(1, 1), add.s(10)).delay()
    second = job.steps[1]
    (d,) = app.broker.fetch(["default"], "w", 1, 30, 0)
    result = app.codec.encode_outcome(Outcome(value=2))
    advance(app, app.codec.decode_message(d.payload), JobStatus.SUCCEEDED, result)
    app.broker.finish([Finish(d, JobStatus.SUCCEEDED, result)])
    app.job(second).cancel()
    assert app.requeue([second]) == 1
    drain(app)
    assert job.result(timeout=0) == 12


def test_short_circuit_leaves_ordinary_jobs_alone(app: Conveyor) -> None:
    assert short_circuit(app, Message(id="j", task="add", args=[1, 2])) is None
    assert short_circuit(app, Message(id="j", task=COLLECT, args=[[1, 2]])) == Outcome(value=[1, 2])
    advance(app, Message(id="j", task="add"), JobStatus.SUCCEEDED, None)  # a no-op


def test_bad_workflows_are_refused_when_built(app: Conveyor) -> None:
    add = t(app, "add")
    other = Conveyor("memory://")
    other_add: Any = other.task(name="add")(lambda x, y: x + y)
    with pytest.raises(ConfigurationError, match="at least one"):
        chain()
    with pytest.raises(ConfigurationError, match=r"task\.s"):
        chain(add)
    with pytest.raises(ConfigurationError, match=r"one iterable of them, got .*task\.s"):
        group(add)
    for header in (add.s(1, 1), chain(add.s(1, 1))):
        with pytest.raises(ConfigurationError, match=r"chord\(\[step, \.\.\.\], callback\)"):
            chord(header, t(app, "total").s())  # type: ignore[arg-type]
    for empty in (lambda: chain(group([])), lambda: group(group([]))):
        with pytest.raises(ConfigurationError, match=r"group\(\[\], app=app\)"):
            empty().delay()
    with pytest.raises(ConfigurationError, match="one app"):
        chain(add.s(1, 1), other_add.s(1))
    with pytest.raises(ConfigurationError, match="key= and job_id="):
        chain(add.s(1, 1), add.options(key="k").s(1)).delay()
    with pytest.raises(ConfigurationError, match="delay=, eta= and depends_on="):
        chain(add.s(1, 1), add.options(delay=5).s(1)).delay()
    assert settled(app)
    # delay on a first step is honoured
    job = chain(add.options(delay=5).s(1, 1), add.s(1)).delay()
    assert app.job(job.id).status is JobStatus.SCHEDULED


# -- cancelling inside a workflow ------------------------------------------------------------


def statuses(app: Conveyor, ids: tuple[str, ...]) -> list[JobStatus]:
    return [r.status if r else JobStatus.QUEUED for r in app.broker.get(list(ids))]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_cancelling_a_step_fails_the_rest_of_its_chain(app: Conveyor, which: int) -> None:
    add = t(app, "add")
    driver = Driver(app)
    job = chain(add.s(1, 1), add.s(1), add.s(2), add.s(3)).delay()
    assert app.job(job.steps[which]).cancel()  # queued (the first) or parked
    driver.drain()
    assert driver.ran == ["add"] * which
    after = [JobStatus.FAILED] * (3 - which)
    assert statuses(app, job.steps) == [JobStatus.SUCCEEDED] * which + [JobStatus.CANCELLED] + after
    with pytest.raises(TaskFailed, match="ended cancelled: cancelled before it ran") as info:
        job.result(timeout=0)
    assert info.value.remote_type.endswith("JobCancelled")
    assert job.steps[which] in str(info.value)
    assert settled(app) and no_links_left(app)


def test_cancelling_a_chord_member_runs_the_callback_with_the_error(app: Conveyor) -> None:
    add, total = t(app, "add"), t(app, "total")
    driver = Driver(app)
    job = chord([add.s(i, 1) for i in range(3)], total.s()).delay()
    assert app.job(job.steps[1]).cancel()
    driver.drain()
    assert driver.ran == ["add", "add"]  # the callback never ran: it got the error
    with pytest.raises(TaskFailed, match=r"JobCancelled.*ended cancelled"):
        job.result(timeout=0)
    assert settled(app) and no_links_left(app)


def test_cancelling_a_workflow_cancels_every_step(app: Conveyor) -> None:
    add, total = t(app, "add"), t(app, "total")
    driver = Driver(app)
    job = chain(add.s(1, 1), chord([add.s(2), add.s(3)], total.s()), add.s(4)).delay()
    assert len(job.steps) == 5
    assert job.cancel()
    driver.drain()
    assert driver.ran == []
    assert statuses(app, job.steps) == [JobStatus.CANCELLED] * 5
    with pytest.raises(JobCancelled):
        job.result(timeout=0)
    assert settled(app) and no_links_left(app)
    assert job.cancel()  # again: still cancelled, nothing changes
    assert statuses(app, job.steps) == [JobStatus.CANCELLED] * 5


def test_cancelling_a_workflow_midway_keeps_what_ran(app: Conveyor) -> None:
    add, mul = t(app, "add"), t(app, "mul")
    driver = Driver(app)
    job = group(add.s(1, 1), chain(mul.s(2, 3), add.s(1))).delay()
    first = app.broker.fetch(["default"], "driver", 1, 30, 0)
    driver.step(first[0])  # one member's first step ended before the cancel
    assert job.cancel()
    driver.drain()
    assert len(driver.ran) == 1
    done = statuses(app, job.steps)
    assert done.count(JobStatus.SUCCEEDED) == 1 and done.count(JobStatus.CANCELLED) == 3
    with pytest.raises(JobCancelled):
        job.result(timeout=0)
    assert settled(app) and no_links_left(app)
