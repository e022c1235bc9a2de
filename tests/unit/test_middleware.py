"""``conveyor.Middleware``: the hooks around a job's life, their order, where they run, the
headers they carry, and that a failing middleware never costs a job."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from conveyor import (
    ConfigurationError,
    Conveyor,
    JobCancelled,
    JobDead,
    JobStatus,
    Middleware,
    PayloadTooLarge,
    SoftTimeLimit,
    TaskFailed,
    ValidationError,
    chain,
    current_job,
)
from conveyor._clock import FakeClock
from conveyor._message import Delivery, Envelope
from conveyor.brokers import LeaseState
from conveyor.brokers.memory import MemoryBroker
from conveyor.middleware import (
    MAX_HEADER_KEY,
    MAX_HEADERS,
    Message,
    Outcome,
    Run,
    WorkerProcess,
    check_headers,
)
from conveyor.testing import drain
from conveyor.worker import Worker
from conveyor.worker._consumer import Consumer

from .test_worker import running

HOOKS = (
    "before_enqueue",
    "after_enqueue",
    "on_worker_start",
    "on_worker_stop",
    "before_run",
    "after_run",
    "on_running",
    "on_outcome",
    "on_retry",
    "on_failure",
    "on_dead_letter",
)


class Recorder(Middleware):
    """Records every hook call as ``(tag, hook, detail)``."""

    def __init__(self, tag: str = "m", calls: list[tuple[str, str, Any]] | None = None) -> None:
        self.tag = tag
        self.calls: list[tuple[str, str, Any]] = [] if calls is None else calls
        self.lock = threading.Lock()

    def _add(self, hook: str, detail: Any = None) -> None:
        with self.lock:
            self.calls.append((self.tag, hook, detail))

    def hooks(self, name: str) -> list[Any]:
        return [d for _, h, d in self.calls if h == name]

    def before_enqueue(self, message: Message) -> None:
        message.headers[f"seen-by-{self.tag}"] = "yes"
        self._add("before_enqueue", message.id)

    def after_enqueue(self, message: Message, error: BaseException | None) -> None:
        self._add("after_enqueue", (message.id, error))

    def on_worker_start(self, worker: WorkerProcess) -> None:
        self._add("on_worker_start", worker)

    def on_worker_stop(self, worker: WorkerProcess) -> None:
        self._add("on_worker_stop", worker)

    def before_run(self, message: Message) -> None:
        self._add("before_run", (message.id, dict(message.headers), current_job().id))

    def after_run(self, message: Message, run: Run) -> None:
        self._add("after_run", (message.id, run))

    def on_running(self, message: Message) -> None:
        self._add("on_running", message.id)

    def on_outcome(self, message: Message | None, outcome: Outcome) -> None:
        self._add("on_outcome", outcome)

    def on_retry(self, message: Message, outcome: Outcome) -> None:
        self._add("on_retry", outcome)

    def on_failure(self, message: Message, outcome: Outcome) -> None:
        self._add("on_failure", outcome)

    def on_dead_letter(self, message: Message | None, outcome: Outcome) -> None:
        self._add("on_dead_letter", (message, outcome))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def app(rec: Recorder) -> Conveyor:
    return Conveyor("memory://", clock=FakeClock(), middleware=[rec])


# -- order and pairing -------------------------------------------------------------------------


def test_hooks_run_in_order_before_in_registration_order_after_in_reverse() -> None:
    calls: list[tuple[str, str, Any]] = []
    app = Conveyor("memory://", middleware=[Recorder("a", calls)])
    app.add_middleware(Recorder("b", calls))

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    job = add.delay(2, 3)
    drain(app)
    assert job.result() == 5
    order = [(tag, hook) for tag, hook, _ in calls]
    assert order == [
        ("a", "before_enqueue"),
        ("b", "before_enqueue"),
        ("b", "after_enqueue"),
        ("a", "after_enqueue"),
        ("a", "on_worker_start"),
        ("b", "on_worker_start"),
        ("a", "on_running"),
        ("b", "on_running"),
        ("a", "before_run"),
        ("b", "before_run"),
        ("b", "after_run"),
        ("a", "after_run"),
        ("a", "on_outcome"),
        ("b", "on_outcome"),
        ("b", "on_worker_stop"),
        ("a", "on_worker_stop"),
    ]


def test_the_hooks_see_the_job_its_run_and_its_outcome(app: Conveyor, rec: Recorder) -> None:
    @app.task(queue="maths")
    def add(x: int, y: int) -> int:
        return x + y

    job = add.delay(2, 3)
    drain(app)
    assert rec.hooks("after_enqueue") == [(job.id, None)]
    (start,) = rec.hooks("on_worker_start")
    assert isinstance(start, WorkerProcess) and start.queues == ("default", "maths")
    assert start.pool == "threads" and not start.child
    (before,) = rec.hooks("before_run")
    assert before == (job.id, {"seen-by-m": "yes"}, job.id)  # current_job() is set already
    ((run_id, run),) = rec.hooks("after_run")
    assert run_id == job.id and run.value == 5 and run.error is None and run.duration >= 0
    (outcome,) = rec.hooks("on_outcome")
    assert outcome.job_id == job.id and outcome.queue == "maths"
    assert outcome.task == add.name and outcome.status == "succeeded"
    assert outcome.duration is not None and outcome.duration >= run.duration
    assert outcome.error is None and outcome.delay is None


def test_a_hook_nobody_overrides_is_not_called() -> None:
    class Only(Middleware):
        def __init__(self) -> None:
            self.outcomes: list[str] = []

        def on_outcome(self, message: Message | None, outcome: Outcome) -> None:
            self.outcomes.append(outcome.status)

    from conveyor._hooks import Hooks

    hooks = Hooks([Only()])
    assert hooks.outcome_hooks and not hooks.before_run_hooks and not hooks.before_enqueue_hooks
    app = Conveyor("memory://", middleware=[only := Only()])

    @app.task
    def ok() -> int:
        return 1

    ok.delay()
    drain(app)
    assert only.outcomes == ["succeeded"]


def test_without_middleware_the_worker_adds_nothing_to_a_job() -> None:
    app = Conveyor("memory://")

    @app.task
    def ok() -> int:
        return 1

    worker = Worker(app)
    assert type(worker._consumer) is Consumer  # the plain consumer: no hook, no check


def test_only_middleware_can_be_added() -> None:
    with pytest.raises(ConfigurationError, match=r"not a conveyor\.Middleware"):
        Conveyor("memory://", middleware=[object()])  # type: ignore[list-item]
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="subclass it"):
        app.add_middleware(print)  # type: ignore[arg-type]
    assert app.middleware == ()


def test_a_middleware_given_the_wrong_way_says_how_to_give_it() -> None:
    class M(Middleware):
        pass

    # Not a list of instances: the middleware itself, its class, its name, not iterable.
    for given, example in [(M(), "M"), (M, "M"), ("pkg.M", "M"), (42, "MyMiddleware")]:
        with pytest.raises(
            ConfigurationError, match=rf"list of instances, as middleware=\[{example}\(\)\]"
        ):
            Conveyor("memory://", middleware=given)  # type: ignore[arg-type]
    # The class, not an instance of it.
    with pytest.raises(ConfigurationError, match=r"pass an instance, M\(\), not the class"):
        Conveyor("memory://", middleware=[M])  # type: ignore[list-item]
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match=r"pass an instance, M\(\), not the class"):
        app.add_middleware(M)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"not a conveyor\.Middleware"):
        app.add_middleware("pkg.M")  # type: ignore[arg-type]
    assert app.middleware == ()


# -- headers -----------------------------------------------------------------------------------


def test_a_job_without_headers_is_encoded_as_before(app: Conveyor) -> None:
    plain = Conveyor("memory://")

    @plain.task(name="t")
    def t(x: int) -> int:
        return x

    payload = plain.envelope(t.s(1))
    assert b"headers" not in payload.payload
    decoded = plain.codec.decode_message(payload.payload)
    assert decoded.headers == {}
    # ...and a payload written before headers existed decodes with none.
    old = msgspec.json.encode({"id": "a1", "task": "t", "args": [1]})
    assert plain.codec.decode_message(old).headers == {}


def test_headers_travel_with_the_job_and_its_retries(app: Conveyor, rec: Recorder) -> None:
    @app.task(retries=1, backoff=0.01)
    def flaky() -> int:
        if current_job().attempt == 0:
            raise ValueError("once")
        return 1

    job = flaky.delay()
    drain(app)
    assert job.result() == 1
    seen = [headers for _, headers, _ in rec.hooks("before_run")]
    assert seen == [{"seen-by-m": "yes"}, {"seen-by-m": "yes"}]
    assert [o.status for o in rec.hooks("on_outcome")] == ["retried", "succeeded"]


def test_a_header_a_run_hook_wrote_does_not_go_out_with_the_retry() -> None:
    # The message is read-only in the worker; one that a hook wrote a float header into
    # went out as the retry's payload, which did not decode: the job died, not retried.
    class Stamps(Middleware):
        def before_run(self, message: Message) -> None:
            message.headers["started"] = 1.5  # type: ignore[assignment]

    app = Conveyor("memory://", clock=FakeClock(), middleware=[Stamps()])

    @app.task(retries=1, backoff=0.01)
    def flaky() -> str:
        if current_job().attempt == 0:
            raise ValueError("once")
        return "ok"

    job = flaky.delay()
    drain(app)
    assert job.result() == "ok"
    assert job.status is JobStatus.SUCCEEDED


def test_a_requeued_job_keeps_its_headers_and_is_not_sent_again(
    app: Conveyor, rec: Recorder
) -> None:
    runs = []

    @app.task(retries=0)
    def once() -> int:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("first run")
        return len(runs)

    job = once.delay()
    drain(app)
    assert job.status is JobStatus.FAILED
    assert app.requeue([job.id]) == 1
    drain(app)
    assert app.job(job.id).result() == 2
    assert rec.hooks("before_enqueue") == [job.id]  # a requeue is not a send
    seen = [headers for _, headers, _ in rec.hooks("before_run")]
    assert seen == [{"seen-by-m": "yes"}, {"seen-by-m": "yes"}]


def test_check_headers_bounds_and_types() -> None:
    assert check_headers({"traceparent": "00-ab-cd-01"}) == {"traceparent": "00-ab-cd-01"}
    for bad, match in [
        ({"n": 1}, "header values are str"),
        ({1: "x"}, "bad message header name"),
        ({"": "x"}, "bad message header name"),
        ({"k" * 129: "x"}, "bad message header name"),
        ({f"h{i}": "x" for i in range(MAX_HEADERS + 1)}, "over the limit"),
        ({"big": "x" * 9000}, "over the limit"),
        (["a"], "must be a dict"),
        # As everything that travels as JSON: exactly str, and valid Unicode.
        ({"k": Sly("v")}, "has a Sly value; header values are str"),
        ({Sly("k"): "v"}, "bad message header name of type Sly"),
        (collections.OrderedDict(k="v"), "not a OrderedDict"),
        ({"k": "bad \ud800"}, "lone surrogate"),
        ({"\udfff": "v"}, "lone surrogate"),
    ]:
        with pytest.raises(ValidationError, match=match):
            check_headers(bad)


class Sly(str):
    """A str whose methods raise: a check that calls one has let user code run."""

    def __len__(self) -> int:
        raise RuntimeError("len")

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)

    def isascii(self) -> bool:
        raise RuntimeError("isascii")


@pytest.mark.parametrize(
    "headers",
    [
        {f"h{i}": "x" for i in range(MAX_HEADERS + 1)},
        {"k" * (MAX_HEADER_KEY + 1): "x"},
        {"": "x"},
        {"n": 1},
        ["a"],
    ],
    ids=["too-many", "long-name", "empty-name", "int-value", "not-a-map"],
)
def test_a_payload_whose_headers_break_the_rules_is_dead_lettered_as_undecodable(
    app: Conveyor, rec: Recorder, headers: object
) -> None:
    """A producer that skipped check_headers (another client, a hand-written payload): the
    decoder holds the headers to their types, their count and their names' length."""
    payload = msgspec.json.encode({"id": "h1", "task": "t", "headers": headers})
    app.broker.enqueue([Envelope("h1", "default", payload)])
    drain(app)
    with pytest.raises(JobDead, match="undecodable payload"):
        app.job("h1").result()
    ((message, outcome),) = rec.hooks("on_dead_letter")
    assert message is None and outcome.reason.startswith("undecodable payload")


def test_bad_headers_from_a_middleware_are_dropped_and_the_job_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Bad(Middleware):
        def before_enqueue(self, message: Message) -> None:
            message.headers["n"] = 3  # type: ignore[assignment]

    rec = Recorder()
    app = Conveyor("memory://", middleware=[rec, Bad()])

    @app.task
    def ok() -> str:
        return "ran"

    job = ok.delay()
    assert "Bad: before_enqueue left bad headers on job" in caplog.text
    drain(app)
    assert job.result() == "ran"
    (before,) = rec.hooks("before_run")
    assert before[1] == {"seen-by-m": "yes"}  # what the job had before Bad ran


# -- a failing middleware never costs a job ----------------------------------------------------


class Raising(Middleware):
    """Raises ``exc`` from one hook (or from all of them)."""

    def __init__(self, hook: str, exc: BaseException | None = None) -> None:
        self.hook = hook
        self.exc = exc or RuntimeError(f"{hook} broke")


def _raiser(name: str) -> Callable[..., None]:
    def hook(self: Raising, *args: Any) -> None:
        if self.hook in (name, "all"):
            raise self.exc

    return hook


for _name in HOOKS:  # on the class: only hooks a class overrides are called
    setattr(Raising, _name, _raiser(_name))


class WorkerSide(Raising):
    """``Raising`` in the worker's hooks only."""

    before_enqueue = Middleware.before_enqueue
    after_enqueue = Middleware.after_enqueue


@pytest.mark.parametrize("hook", [*HOOKS, "all"])
@pytest.mark.parametrize("kind", ["sync", "async", "failing"])
def test_an_exception_in_a_hook_is_logged_and_the_job_runs_once(
    hook: str, kind: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    rec = Recorder()
    app = Conveyor("memory://", clock=FakeClock(), middleware=[Raising(hook), rec])

    @app.task
    def sync_task() -> str:
        with runs.open("a") as f:
            f.write("x")
        return "ok"

    @app.task
    async def async_task() -> str:
        with runs.open("a") as f:
            f.write("x")
        return "ok"

    @app.task
    def failing_task() -> str:
        with runs.open("a") as f:
            f.write("x")
        raise ValueError("the task's own error")

    task = {"sync": sync_task, "async": async_task, "failing": failing_task}[kind]
    job = task.delay()
    drain(app)
    assert runs.read_text() == "x"  # ran exactly once
    if kind == "failing":
        with pytest.raises(TaskFailed, match="the task's own error"):
            job.result()
    else:
        assert job.result() == "ok"
    called = hook not in ("on_retry", "on_dead_letter", "on_failure") or (
        hook == "on_failure" and kind == "failing"
    )
    assert ("middleware Raising:" in caplog.text) == called
    # The middleware after the broken one still saw the whole life of the job.
    assert len(rec.hooks("before_run")) == len(rec.hooks("after_run")) == 1
    assert [o.status for o in rec.hooks("on_outcome")] == [
        "failed" if kind == "failing" else "succeeded"
    ]


def test_system_exit_in_a_worker_hook_does_not_end_the_worker_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Conveyor("memory://", middleware=[Raising("all", SystemExit(3))])

    @app.task
    def ok(i: int) -> int:
        return i

    jobs = [ok.delay(i) for i in range(20)]
    drain(app, concurrency=2)
    assert [j.result() for j in jobs] == list(range(20))
    assert "SystemExit" in caplog.text


def test_keyboard_interrupt_in_a_worker_hook_is_that_hook_s_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In the worker a Ctrl-C reaches the main thread only, so one from a hook is the hook's
    (a task's exception whose __str__ raises it, read by a careless middleware)."""
    rec = Recorder()
    app = Conveyor("memory://", middleware=[WorkerSide("all", KeyboardInterrupt()), rec])

    @app.task
    def ok(i: int) -> int:
        return i

    jobs = [ok.delay(i) for i in range(5)]
    drain(app, concurrency=2)
    assert [j.result() for j in jobs] == list(range(5))
    for hook in ("on_worker_start", "before_run", "after_run", "on_running", "on_outcome"):
        assert f"middleware WorkerSide: {hook} raised" in caplog.text
    assert len(rec.hooks("after_run")) == len(rec.hooks("on_outcome")) == 5


def test_keyboard_interrupt_in_a_producer_hook_stops_the_send_after_every_after_enqueue(
    rec: Recorder,
) -> None:
    app = Conveyor("memory://", middleware=[rec, Raising("after_enqueue", KeyboardInterrupt())])

    @app.task
    def t() -> None: ...

    with pytest.raises(KeyboardInterrupt):
        t.delay()
    # The job was sent; the other middleware's after_enqueue ran before the interrupt went on.
    ((job_id, error),) = rec.hooks("after_enqueue")
    assert error is None and app.job(job_id).status is JobStatus.QUEUED

    app = Conveyor("memory://", middleware=[Raising("before_enqueue", KeyboardInterrupt()), rec])
    t2 = app.task(name="t2")(lambda: None)
    with pytest.raises(KeyboardInterrupt):
        t2.delay()
    ((job_id, error),) = rec.hooks("after_enqueue")[1:]
    assert isinstance(error, KeyboardInterrupt)  # the send was abandoned, and said so
    assert app.broker.get([job_id]) == [None]


def test_a_keyboard_interrupt_in_after_enqueue_leaves_no_job_of_a_batch_unheard(
    rec: Recorder,
) -> None:
    # The interrupt of the first job's after_enqueue ended the loop: the batch's other jobs
    # never got theirs (a tracing middleware's send spans stayed open).
    class CtrlCOnce(Middleware):
        raised = False

        def after_enqueue(self, message: Message, error: BaseException | None) -> None:
            if not self.raised:
                self.raised = True
                raise KeyboardInterrupt

    app = Conveyor("memory://", middleware=[rec, CtrlCOnce()])

    @app.task
    def t(i: int) -> None: ...

    with pytest.raises(KeyboardInterrupt):
        app.enqueue_many([t.s(i) for i in range(5)])
    heard = rec.hooks("after_enqueue")
    assert len(heard) == 5 and all(error is None for _, error in heard)
    assert len({job_id for job_id, _ in heard}) == 5


def test_after_enqueue_gets_the_error_the_caller_gets(rec: Recorder) -> None:
    app = Conveyor("memory://", max_payload=200, middleware=[rec])

    @app.task
    def big(s: str) -> None: ...

    with pytest.raises(PayloadTooLarge):
        big.delay("x" * 500)
    ((job_id, error),) = rec.hooks("after_enqueue")
    assert isinstance(error, PayloadTooLarge) and rec.hooks("before_enqueue") == [job_id]


def test_after_enqueue_sees_a_broker_that_refused_the_batch(rec: Recorder) -> None:
    app = Conveyor("memory://", middleware=[rec])

    @app.task
    def t(i: int) -> None: ...

    def refuse(envelopes: list[Envelope], events: object = None) -> list[str]:
        raise ConnectionError("broker away")

    app.broker.enqueue = refuse  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        app.enqueue_many([t.s(1), t.s(2)])
    errors = [e for _, e in rec.hooks("after_enqueue")]
    assert len(errors) == 2 and all(isinstance(e, ConnectionError) for e in errors)


async def test_the_async_producer_path_runs_the_hooks(app: Conveyor, rec: Recorder) -> None:
    @app.task
    def t(i: int) -> int:
        return i

    job = await t.delay_async(4)
    jobs = await app.enqueue_many_async([t.s(5), t.s(6)])
    assert [i for i, _ in rec.hooks("after_enqueue")] == [job.id, *(j.id for j in jobs)]


def test_workflow_steps_and_periodic_ticks_go_through_before_enqueue() -> None:
    clock = FakeClock()
    rec = Recorder()
    app = Conveyor("memory://", clock=clock, middleware=[rec])

    @app.task
    def step(x: int) -> int:
        return x + 1

    @app.periodic(every=60)
    def tick() -> str:
        return "tick"

    flow = chain(step.s(1), step.s(), step.s()).delay()
    assert len(rec.hooks("before_enqueue")) == 3
    assert len(rec.hooks("after_enqueue")) == 3
    drain(app, until=clock.time() + 61)
    assert flow.result() == 4
    assert len(rec.hooks("before_enqueue")) >= 4  # and at least one tick
    assert all(h == {"seen-by-m": "yes"} for _, h, _ in rec.hooks("before_run"))


# -- where the run hooks run -------------------------------------------------------------------

SPAN: contextvars.ContextVar[str | None] = contextvars.ContextVar("span", default=None)


class Tracing(Middleware):
    """A span-like context variable set around the run, as a tracer would."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str | None]] = []
        self.tokens: dict[str, contextvars.Token[str | None]] = {}

    def before_run(self, message: Message) -> None:
        self.tokens[message.id] = SPAN.set(f"span-{message.id}")

    def after_run(self, message: Message, run: Run) -> None:
        self.seen.append((SPAN.get(), run.value))
        SPAN.reset(self.tokens.pop(message.id))


@pytest.mark.parametrize("pool", ["threads", "async"])
def test_run_hooks_share_the_task_context_in_every_in_process_pool(pool: str) -> None:
    tracing = Tracing()
    app = Conveyor("memory://", middleware=[tracing])

    @app.task
    def sync_task() -> str | None:
        return SPAN.get()

    @app.task
    async def async_task() -> str | None:
        await asyncio.sleep(0)
        return SPAN.get()

    jobs = [sync_task.delay(), async_task.delay(), sync_task.delay(), async_task.delay()]
    Worker(app, pool=pool, concurrency=4, grace=0).drain(timeout=30)
    for job in jobs:
        assert job.result() == f"span-{job.id}"  # the task ran inside the span
    assert sorted(tracing.seen) == sorted((f"span-{j.id}", f"span-{j.id}") for j in jobs)
    assert SPAN.get() is None


# -- outcomes ------------------------------------------------------------------------------------


def test_a_retried_then_failed_job_reports_the_exception_itself(
    app: Conveyor, rec: Recorder
) -> None:
    class Boom(Exception):
        pass

    @app.task(retries=1, backoff=5)
    def doomed() -> None:
        raise Boom(f"attempt {current_job().attempt}")

    job = doomed.delay()
    drain(app)
    with pytest.raises(TaskFailed):
        job.result()
    retried, failed = rec.hooks("on_outcome")
    assert retried.status == "retried" and isinstance(retried.error, Boom)
    assert retried.delay is not None and 0 <= retried.delay <= 5
    assert failed.status == "failed" and str(failed.error) == "attempt 1"
    assert rec.hooks("on_retry") == [retried] and rec.hooks("on_failure") == [failed]
    assert failed.reason is not None and "Boom: attempt 1" in failed.reason
    errors = [run.error for _, run in rec.hooks("after_run")]
    assert [type(e) for e in errors] == [Boom, Boom]


def test_a_value_that_cannot_be_stored_fails_with_a_described_error(
    app: Conveyor, rec: Recorder
) -> None:
    @app.task
    def odd() -> object:
        return object()

    odd.delay()
    drain(app)
    (outcome,) = rec.hooks("on_outcome")
    assert outcome.status == "failed" and isinstance(outcome.error, TaskFailed)
    assert outcome.error.remote_type == "conveyor._errors.SerializationError"
    ((_, run),) = rec.hooks("after_run")
    assert run.error is None  # the task itself returned


def test_dead_letters_without_a_readable_message(app: Conveyor, rec: Recorder) -> None:
    app.broker.enqueue([Envelope("garbage1", "default", b"\x00not json")])

    @app.task
    def known() -> None: ...

    unknown = app.enqueue(print)  # builtins is not trusted: dead-lettered, never run
    drain(app)
    with pytest.raises(JobDead):
        unknown.result()
    outcomes = {o.job_id: o for o in rec.hooks("on_outcome")}
    garbage = outcomes["garbage1"]
    assert garbage.status == "dead" and garbage.task is None and garbage.duration is None
    assert garbage.reason is not None and garbage.reason.startswith("undecodable payload")
    assert outcomes[unknown.id].status == "dead" and outcomes[unknown.id].task == "builtins:print"
    dead = {o.job_id: m for m, o in rec.hooks("on_dead_letter")}
    assert dead["garbage1"] is None and dead[unknown.id] is not None
    assert rec.hooks("on_running") == []  # neither ran


@contextmanager
def slow_job_running(rec: Recorder, **options: float) -> Iterator[tuple[Worker, str]]:
    """A worker (1 slot) running a job that takes half a minute: (worker, job id)."""
    app = Conveyor("memory://", middleware=[rec])
    started = threading.Event()

    @app.task
    def slow() -> None:
        started.set()
        for _ in range(600):
            time.sleep(0.05)

    job = slow.delay()
    with running(Worker(app, concurrency=1, grace=0, **options)) as worker:
        assert started.wait(10)
        yield worker, job.id


def test_a_cancelled_run_is_cancelled_in_after_run_and_in_the_outcome(rec: Recorder) -> None:
    with slow_job_running(rec, lease=0.6) as (worker, job_id):  # renewals bring the cancel
        job = worker.app.job(job_id)
        job.cancel()
        with pytest.raises(JobCancelled):
            job.result(timeout=10)
    ((_, run),) = rec.hooks("after_run")
    assert isinstance(run.error, JobCancelled) and "cancel" in str(run.error)
    (outcome,) = rec.hooks("on_outcome")
    assert outcome.status == "cancelled"


def test_a_soft_time_limit_reaches_the_task_through_the_hooks(rec: Recorder) -> None:
    app = Conveyor("memory://", middleware=[rec])  # time limits run on the real clock

    @app.task(timeout=0.2)
    def long() -> str:
        try:
            for _ in range(200):
                time.sleep(0.05)
        except SoftTimeLimit:
            return "cleaned up"
        return "not stopped"

    job = long.delay()
    drain(app, timeout=30)
    assert job.result() == "cleaned up"


def test_a_job_handed_back_at_shutdown_is_released(rec: Recorder) -> None:
    with slow_job_running(rec) as (worker, job_id):
        worker.stop(graceful=False)
    (outcome,) = rec.hooks("on_outcome")
    assert outcome.status == "released" and outcome.job_id == job_id
    assert outcome.duration is not None
    assert worker.app.job(job_id).status is JobStatus.QUEUED  # back for the next worker
    assert [h for _, h, _ in rec.calls][-1] == "on_worker_stop"


class Reclaimed(MemoryBroker):
    """A memory broker that says when a renewal found a lease lost."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.lost = threading.Event()

    def renew(self, deliveries: Sequence[Delivery], lease: float) -> list[LeaseState]:
        states = super().renew(deliveries, lease)
        if LeaseState.LOST in states:
            self.lost.set()
        return states


@pytest.mark.parametrize("ends", ["raises", "returns"])
def test_a_run_whose_lease_was_lost_is_released_not_reported(
    rec: Recorder, ends: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    broker = Reclaimed(clock)
    app = Conveyor(broker=broker, clock=clock, middleware=[rec])
    stolen: list[Delivery] = []

    @app.task(retries=1)
    def stalls() -> str:
        clock.advance(100)  # the worker "froze" past its lease...
        stolen.extend(app.broker.fetch(["default"], "other-worker", 1, 30, 0))  # ...reclaimed
        assert broker.lost.wait(10)  # and its next renewal heard so
        if ends == "raises":
            raise ValueError("late")
        return "late"

    job = stalls.delay()
    worker = Worker(app, lease=0.3, concurrency=1)  # one slot: it cannot reclaim it itself
    with caplog.at_level(logging.WARNING, "conveyor.worker"), running(worker):
        deadline = time.monotonic() + 10
        while "was refused" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(stolen) == 1 and job.status is JobStatus.RUNNING  # the other worker's now
    (outcome,) = rec.hooks("on_outcome")
    assert outcome.status == "released" and outcome.job_id == job.id
    assert outcome.error is None and outcome.duration is not None
    assert rec.hooks("on_retry") == rec.hooks("on_failure") == []


class OutcomesOnly(Middleware):
    """Only ``on_outcome``: the worker keeps the run's error without run hooks."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def on_outcome(self, message: Message | None, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


@pytest.mark.parametrize("pool", ["threads", "async"])
@pytest.mark.parametrize("hooks", ["runs", "outcomes"])
def test_a_time_limit_reaches_the_hooks_described(pool: str, hooks: str) -> None:
    rec = Recorder()
    only = OutcomesOnly()
    app = Conveyor("memory://", middleware=[rec if hooks == "runs" else only])

    if pool == "async":

        @app.task(timeout=0.2)
        async def long_async() -> None:
            await asyncio.sleep(30)

        job = long_async.delay()
    else:

        @app.task(timeout=0.2)
        def long_sync() -> None:
            for _ in range(600):
                time.sleep(0.05)

        job = long_sync.delay()
    with running(Worker(app, pool=pool)), pytest.raises(TaskFailed, match="time limit") as info:
        job.result(timeout=30)
    described = info.value.remote_message
    assert described == "the job ran past its time limit of 0.2 s; it was interrupted"
    errors = [o.error for o in (rec.hooks("on_outcome") or only.outcomes)]
    if hooks == "runs":
        errors += [run.error for _, run in rec.hooks("after_run")]
    assert len(errors) == (2 if hooks == "runs" else 1)
    for error in errors:
        assert type(error) is SoftTimeLimit and str(error) == described


def test_every_on_running_gets_one_outcome_under_load(rec: Recorder) -> None:
    app = Conveyor("memory://", middleware=[rec])

    @app.task(retries=1, backoff=0.001)
    def mixed(i: int) -> int:
        if i % 3 == 0 and current_job().attempt == 0:
            raise ValueError(i)
        return i

    jobs = [mixed.delay(i) for i in range(300)]
    drain(app, concurrency=8)
    assert [j.result() for j in jobs] == list(range(300))
    running = rec.hooks("on_running")
    outcomes = rec.hooks("on_outcome")
    assert len(running) == len(outcomes) == 400
    assert sorted(running) == sorted(o.job_id for o in outcomes)


# -- the processes pool ------------------------------------------------------------------------

TASKS = """
import json, os, time
from conveyor import Conveyor, Middleware

LOG = os.environ["MW_TEST_LOG"]


class ChildSide(Middleware):
    def _log(self, *what):
        with open(LOG, "a") as f:
            f.write(json.dumps([os.getpid(), *what]) + "\\n")

    def on_worker_start(self, worker):
        self._log("start", worker.child, worker.pool)

    def on_worker_stop(self, worker):
        self._log("stop", worker.child)

    def before_run(self, message):
        self._log("before_run", message.id, message.headers.get("from"))

    def after_run(self, message, run):
        self._log("after_run", message.id, repr(run.error) if run.error else run.value)

    def before_enqueue(self, message):
        message.headers["from"] = "producer"


app = Conveyor("memory://", middleware=[ChildSide()])


@app.task
def pid() -> int:
    return os.getpid()


@app.task
def fail() -> None:
    raise KeyError("in the child")


@app.task(timeout=0.5)
def hang() -> None:
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def proc_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import os

    path = tmp_path_factory.mktemp("mwlog") / "log.jsonl"
    old = os.environ.get("MW_TEST_LOG")
    os.environ["MW_TEST_LOG"] = str(path)
    yield path
    if old is None:
        del os.environ["MW_TEST_LOG"]
    else:
        os.environ["MW_TEST_LOG"] = old


@pytest.fixture(scope="module")
def tasks(write_module: Callable[[str, str], ModuleType], proc_log: Path) -> ModuleType:
    return write_module("mw_proc_tasks", TASKS)


@pytest.mark.timeout(90)
def test_processes_run_hooks_in_the_child_and_decisions_in_the_worker(
    tasks: ModuleType, proc_log: Path
) -> None:
    import json
    import os

    rec = Recorder()
    tasks.app.add_middleware(rec)  # in the worker process only: the child imports its own
    try:
        ok, failing, hung = tasks.pid.delay(), tasks.fail.delay(), tasks.hang.delay()
        with running(Worker(tasks.app, pool="processes", concurrency=1, module="mw_proc_tasks")):
            child = ok.result(timeout=30)
            with pytest.raises(TaskFailed):
                failing.result(timeout=30)
            with pytest.raises(TaskFailed, match="killed"):
                hung.result(timeout=30)
            replacement = tasks.pid.delay().result(timeout=30)  # up before the stop
    finally:
        tasks.app.middleware = tasks.app.middleware[:-1]
    lines = [json.loads(line) for line in proc_log.read_text().splitlines()]
    by_child = [line[1:] for line in lines if line[0] == child]
    assert by_child[0] == ["start", True, "processes"]
    assert ["before_run", ok.id, "producer"] in by_child
    assert ["after_run", ok.id, child] in by_child
    assert ["after_run", failing.id, "KeyError('in the child')"] in by_child
    assert not any(line[1:3] == ["after_run", hung.id] for line in lines)  # killed mid-run
    assert [replacement, "stop", True] in lines  # its replacement, told to stop
    # The worker process ran its lifecycle hooks and none of the run hooks.
    assert child != os.getpid()
    ours = [line[1:] for line in lines if line[0] == os.getpid()]
    assert ours == [["start", False, "processes"], ["stop", False]]
    # ...and saw every outcome.
    assert rec.hooks("before_run") == [] and rec.hooks("after_run") == []
    outcomes = {o.job_id: o for o in rec.hooks("on_outcome")}
    assert outcomes[ok.id].status == "succeeded"
    assert outcomes[failing.id].status == "failed"
    error = outcomes[failing.id].error
    assert isinstance(error, TaskFailed) and error.remote_type == "builtins.KeyError"
    assert "in the child" in error.remote_traceback
    assert outcomes[hung.id].status == "failed"
    assert isinstance(outcomes[hung.id].error, TaskFailed)
    assert outcomes[hung.id].error.remote_type == "builtins.TimeoutError"
    assert sorted(rec.hooks("on_running")) == sorted(outcomes)
    starts = rec.hooks("on_worker_start")
    assert len(starts) == 1 and not starts[0].child


def test_a_broken_hook_is_logged_with_the_middleware_the_hook_and_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log line of a broken hook names the middleware, the hook and the job."""
    caplog.set_level(logging.ERROR, logger="conveyor.middleware")
    app = Conveyor("memory://", middleware=[Raising("before_run")])

    @app.task
    def ok() -> int:
        return 1

    job = ok.delay()
    drain(app)
    assert f"middleware Raising: before_run raised for job {job.id}" in caplog.text
    assert "RuntimeError: before_run broke" in caplog.text
