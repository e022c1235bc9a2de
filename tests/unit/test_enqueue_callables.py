"""``app.enqueue(fn)`` sends ``fn`` by name (``module:qualname``); a worker imports that name.
A callable the name does not lead back to is refused at enqueue with the reason, and nothing
is written: it would otherwise run as something else, or be dead-lettered as unknown."""

from __future__ import annotations

import functools
import os.path
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import Conveyor, Signature, Task, ValidationError
from conveyor._clock import FakeClock
from conveyor.worker._resolve import Resolver, top_package


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("memory://", clock=FakeClock())


def module_level(x: int) -> int:
    return x


class Thing:
    def method(self) -> None: ...

    @classmethod
    def build(cls) -> Thing:
        return cls()

    @staticmethod
    def helper() -> None: ...

    def __call__(self) -> None: ...


def _traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


@_traced
def decorated(x: int) -> int:
    return x


def _outer() -> Callable[[], int]:
    captured = 3

    def closure() -> int:
        return captured

    return closure


def _impostor() -> None: ...


def _in_main() -> None: ...


def _dunder() -> None: ...


_impostor.__qualname__ = "module_level"  # its name leads to another function
_in_main.__module__ = "__main__"
_dunder.__qualname__ = "Thing.__call__"

REFUSED: dict[str, tuple[Callable[..., Any], str]] = {
    "bound method": (Thing().method, "a method bound to an object (Thing)"),
    "lambda": (lambda: 1, "a lambda has no name a worker can import"),
    "nested function": (_outer, ""),  # replaced below by what _outer returns
    "partial": (functools.partial(module_level, 1), "app.enqueue(p.func, *p.args"),
    "bound builtin": ([].append, "a method bound to an object (list)"),
    "str method": ("text".upper, "a method bound to an object (str)"),
    "callable instance": (Thing(), "an object of type Thing has no name a worker can import"),
    "__main__": (_in_main, "a worker cannot import your script"),
    "impostor": (_impostor, "leads to <function module_level"),
    "dunder": (_dunder, "is not a name a worker resolves"),
}
REFUSED["nested function"] = (_outer(), "is defined inside a function")


def _depth(app: Conveyor) -> int:
    return sum(s.queued + s.scheduled for s in app.broker.stats())


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("how", ["enqueue", "options().enqueue", "enqueue_async"])
async def test_a_callable_that_cannot_travel_by_name_is_refused_with_the_reason(
    app: Conveyor, kind: str, how: str
) -> None:
    fn, reason = REFUSED[kind]
    with pytest.raises(ValidationError) as caught:
        if how == "enqueue":
            app.enqueue(fn)
        elif how == "options().enqueue":
            app.options(queue="other").enqueue(fn)
        else:
            await app.enqueue_async(fn)
    assert str(caught.value).startswith("cannot enqueue "), caught.value
    assert reason in str(caught.value)
    assert _depth(app) == 0


ACCEPTED: dict[str, Callable[..., Any]] = {
    "module-level function": module_level,
    "classmethod": Thing.build,
    "staticmethod": Thing.helper,
    "class": Thing,
    "decorated with functools.wraps": decorated,
    "builtin": len,
    "stdlib function": os.path.join,
    "module function of a C module": sys.getrecursionlimit,
}


@pytest.mark.parametrize("kind", sorted(ACCEPTED))
def test_a_callable_whose_name_leads_back_to_it_travels_and_the_worker_finds_it(
    app: Conveyor, kind: str
) -> None:
    fn = ACCEPTED[kind]
    app.enqueue(fn)
    [delivery] = app.broker.fetch(["default"], "t", 1, 30, 0)
    name = app.codec.decode_message(delivery.payload).task
    trusted = frozenset({top_package(name), __name__.split(".")[0]})
    found = Resolver({}, trusted).resolve(name).fn
    assert found is fn or found == fn, (name, found)


def test_a_registered_tasks_own_function_travels_as_the_task(app: Conveyor) -> None:
    module = types.ModuleType("callables_probe")
    sys.modules["callables_probe"] = module
    try:

        def job() -> str:
            return "ran"

        job.__module__, job.__qualname__ = "callables_probe", "job"
        module.job = app.task(name="callables_probe:job")(job)  # type: ignore[attr-defined]
        assert isinstance(module.job, Task)
        app.enqueue(job)
        [delivery] = app.broker.fetch(["default"], "t", 1, 30, 0)
        assert app.codec.decode_message(delivery.payload).task == "callables_probe:job"
    finally:
        del sys.modules["callables_probe"]


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "says"),
    [
        (42, (), {}, "bad task name 42"),
        ("", (), {}, "bad task name ''"),
        ("m:f", "ab", {}, "bad arguments 'ab' for m:f: pass a tuple or a list"),
        ("m:f", (), {1: "x"}, "bad keyword arguments {1: 'x'} for m:f: pass a dict with str keys"),
        ("m:f", (), [("a", 1)], "pass a dict with str keys"),
    ],
)
def test_a_signature_built_by_hand_is_checked_when_made(
    app: Conveyor, name: Any, args: Any, kwargs: Any, says: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Signature(app, name, args, kwargs, app.defaults)
    assert says in str(caught.value)
    with pytest.raises(ValidationError, match=r"pass app\.defaults"):
        Signature(app, "m:f", (), {}, {"queue": "q"})  # type: ignore[arg-type]
