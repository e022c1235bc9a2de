"""Tasks that misbehave, for the unit and integration tests of a worker that must outlive them.

``TASKS`` is module source that expects an ``app`` above it: tests write it after their own
app line into a module a worker imports (pool processes and ``conveyor worker`` import it by
name). Its tasks build what they raise or return from a JSON spec passed as the argument,
so Hypothesis can draw the spec in the test process and any pool can run it.

An exception spec (``exception_specs()``) picks the exception's base class (``SystemExit``
and ``KeyboardInterrupt`` included) and what is hostile about it: a ``__str__`` or
``__repr__`` that raises (anything, or an exception just as unprintable), recurses, returns
a huge string, a lone surrogate, a ``str`` subclass or no ``str`` at all; ``args`` whose
own ``__str__`` raises; a metaclass whose name lookups raise; a huge ``__qualname__``; a
``__module__`` that is not a string; ``__notes__`` that are not a list; a ``__traceback__``
or ``__class__`` property that raises; and a ``__cause__`` that is itself hostile.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from conveyor import Conveyor, JobStatus, TaskFailed

TASKS = """
import asyncio, datetime, threading, time

RAISERS = {
    "RuntimeError": RuntimeError, "ValueError": ValueError, "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit,
    "RecursionError": RecursionError, "MemoryError": MemoryError,
}
BASES = {
    "Exception": Exception, "ValueError": ValueError, "BaseException": BaseException,
    "KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
}


class Sly(str):  # a str whose every method raises; only the str slot's own code is safe
    def __len__(self): raise RuntimeError("len")
    def __str__(self): raise RuntimeError("str")
    def __getitem__(self, i): raise RuntimeError("getitem")
    def encode(self, *a, **k): raise RuntimeError("encode")
    def isascii(self): raise RuntimeError("isascii")


class Unprintable:
    def __init__(self, raiser="RuntimeError"): self.raiser = RAISERS[raiser]
    def __str__(self): raise self.raiser("unprintable")
    def __repr__(self): raise self.raiser("unreprable")


class Meta(type):
    def __getattribute__(cls, name):
        if name in ("__qualname__", "__module__", "__name__", "__mro__", "__notes__"):
            raise RuntimeError(f"no {name} for you")
        return type.__getattribute__(cls, name)


def behaviour(how):
    kind = how[0]
    if kind == "raise":
        raiser = RAISERS[how[1]]
        def method(self): raise raiser("from a hostile method")
    elif kind == "raise_self":  # what it raises is just as unprintable
        def method(self): raise type(self)("again")
    elif kind == "recurse":
        def method(self): return method(self)
    elif kind == "huge":
        def method(self): return "x" * how[1]
    elif kind == "surrogate":
        def method(self): return "bad \\ud800 text"
    elif kind == "sly":
        def method(self): return Sly("sly text")
    else:  # "nonstr": str() itself raises TypeError
        def method(self): return 42
    return method


def _raise_tb(self): raise RuntimeError("not for you")


def build(spec):
    ns = {}
    if spec.get("str"): ns["__str__"] = behaviour(spec["str"])
    if spec.get("repr"): ns["__repr__"] = behaviour(spec["repr"])
    if spec.get("notes") == "int": ns["__notes__"] = 5
    if spec.get("notes") == "hostile": ns["__notes__"] = [Unprintable()]
    if spec.get("tb_property"): ns["__traceback__"] = property(_raise_tb)
    if spec.get("module") == "nonstr": ns["__module__"] = Unprintable()
    if spec.get("qualname"): ns["__qualname__"] = "Q" * spec["qualname"]
    if spec.get("klass"): ns["__class__"] = property(_raise_tb)  # isinstance() asks it
    meta = Meta if spec.get("meta") else type
    cls = meta("Hostile", (BASES[spec["base"]],), ns)
    exc = cls(Unprintable(spec["args"]) if spec.get("args") else "plain message")
    if spec.get("cause"):
        exc.__cause__ = build(spec["cause"])
    return exc


class Weird:
    def __iter__(self): raise RuntimeError("iter")
    def __len__(self): raise RuntimeError("len")


class Hostile(list):
    def __iter__(self): raise RuntimeError("iter")
    def __len__(self): raise RuntimeError("len")


class TZ(datetime.tzinfo):
    def utcoffset(self, dt): raise SystemExit("from utcoffset")
    def dst(self, dt): return None


class HostileTZ(datetime.tzinfo):
    def utcoffset(self, dt):
        raise build({"base": "Exception", "klass": True, "str": ["raise", "SystemExit"]})
    def dst(self, dt): return None


async def later():
    return 1


def value(kind, n):
    if kind == "weird": return Weird()
    if kind == "hostile_list": return Hostile([1, 2])
    if kind == "tz": return datetime.datetime(2020, 1, 1, tzinfo=TZ())
    if kind == "hostile_tz": return datetime.datetime(2020, 1, 1, tzinfo=HostileTZ())
    if kind == "huge_int": return 10 ** 5000
    if kind == "self_ref":
        loop = []
        loop.append(loop)
        return loop
    if kind == "deep":
        deep = []
        for _ in range(100_000):
            deep = [deep]
        return deep
    if kind == "big": return "x" * n
    if kind == "surrogate": return "\\ud800"
    if kind == "generator": return (i for i in range(3))
    if kind == "coroutine": return later()
    return n


@app.task
def fail(spec):
    raise build(spec)


@app.task
async def afail(spec):
    raise build(spec)


@app.task
def give(kind, n=0):
    return value(kind, n)


@app.task
async def agive(kind, n=0):
    return value(kind, n)  # the "coroutine" kind: forgot to await it


@app.task
def fine(x):
    return x


@app.task
def recurse(n):
    return recurse(n + 1)  # a RecursionError with a thousand frames


@app.task
def leave_thread(name):
    # Not a daemon (a thread started from a pool thread would inherit daemon=True).
    threading.Thread(target=time.sleep, args=(3600,), name=name, daemon=False).start()
    return name


@app.task
async def block(seconds):
    time.sleep(seconds)  # blocks the event loop: no await
    return seconds
"""

RAISERS = ["RuntimeError", "ValueError", "SystemExit", "KeyboardInterrupt", "GeneratorExit",
           "RecursionError", "MemoryError"]  # fmt: skip
BASES = ["Exception", "ValueError", "BaseException", "KeyboardInterrupt", "SystemExit",
         "GeneratorExit"]  # fmt: skip

behaviours = st.one_of(
    st.tuples(st.just("raise"), st.sampled_from(RAISERS)),
    st.just(("recurse",)),
    st.tuples(st.just("huge"), st.integers(0, 200_000)),
    st.sampled_from([("surrogate",), ("sly",), ("nonstr",), ("raise_self",)]),
).map(list)


def _spec(cause: st.SearchStrategy[dict[str, Any] | None]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"base": st.sampled_from(BASES)},
        optional={
            "str": behaviours,
            "repr": behaviours,
            "args": st.sampled_from(RAISERS),
            "meta": st.booleans(),
            "notes": st.sampled_from(["int", "hostile"]),
            "tb_property": st.booleans(),
            "module": st.just("nonstr"),
            "qualname": st.integers(1, 5000),
            "klass": st.booleans(),
            "cause": cause,
        },
    )


def exception_specs() -> st.SearchStrategy[dict[str, Any]]:
    """Hostile exceptions, with causes that are hostile too (two deep at most)."""
    return _spec(_spec(st.none()))


def unprintable(spec: dict[str, Any]) -> bool:
    """Whether ``str()`` of the exception ``spec`` builds raises."""
    how = spec.get("str")
    if how is not None:
        return how[0] in ("raise", "raise_self", "recurse", "nonstr")
    return "args" in spec  # BaseException.__str__ calls str() on its one argument


def failure(job: Any) -> TaskFailed:
    """What ``job`` failed with; it must have failed."""
    with pytest.raises(TaskFailed) as caught:
        job.result(timeout=30)
    assert job.status is JobStatus.FAILED
    return caught.value


def stored(app: Conveyor, job: Any) -> int:
    """The size of the outcome the broker keeps for ``job``."""
    (record,) = app.broker.get([job.id])
    assert record is not None and record.result is not None
    return len(record.result)
