"""Tasks, signatures and per-call options.

``Task[P, R]`` keeps the wrapped function's signature, so ``resize.delay("a.png", "wide")``
is a type error when ``resize`` takes ``(str, int)``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib
import inspect
import math
import re
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._checks import MAX_TIMESTAMP, flag, refuse, seconds, shown, whole
from ._errors import InvalidName, InvalidOption, ValidationError
from ._message import DEFAULT_QUEUE, validate_job_id, validate_priority, validate_queue
from .ratelimit import check_rate_key_length, parse_rate
from .stores._port import check_key

if TYPE_CHECKING:
    from ._app import Conveyor
    from ._job import Job

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Options:
    """How a job runs. Set on ``@app.task(...)`` and overridden per call with ``.options()``."""

    queue: str = DEFAULT_QUEUE
    """The queue the job goes to: 1-64 letters, digits, ``_``, ``.`` and ``-``."""
    priority: int = 0
    """0 to 9: a worker takes the highest first (FIFO within one priority)."""
    retries: int = 0
    """How many times a failed job runs again (0 to 10,000)."""
    retry_on: tuple[type[BaseException], ...] = ()
    """The exception classes that are retried, one or a list; empty: any ``Exception``."""
    backoff: float = 1.0
    """The scale of the retries' delays in seconds (or a ``timedelta``): retry n waits a
    random time below ``backoff * 2**n`` (full jitter, capped at an hour), so the first one
    waits less than ``backoff``, and no minimum wait is guaranteed."""
    timeout: float | None = None
    """A time limit in seconds: ``SoftTimeLimit`` is raised in the task (thread pool), an
    ``async def`` task is cancelled (``asyncio.CancelledError``; the job records
    ``SoftTimeLimit``), or its child process is killed (``--pool processes``)."""
    result_ttl: int = 86400
    """Seconds an ended job's record and result are kept (one day). A job cancelled before
    it ran is kept one day whatever this says (the cancel does not read its options)."""
    delay: float | None = None
    """Seconds from now before the job may run (0 is now); not with ``eta``."""
    eta: float | None = None
    """When the job may run: a timezone-aware ``datetime`` or a Unix timestamp."""
    key: str | None = None
    """A unique key: while a job with it is pending, an enqueue with the same key writes
    nothing and returns that job."""
    job_id: str | None = None
    """The job's id (default: a new one); an enqueue of an id that exists writes nothing."""
    rate: str | None = None
    """At most ``n`` starts per period across all workers: ``"100/m"``, ``"10/30s"``."""
    rate_key: str | None = None
    """Count ``rate`` for this key, shared by every job that uses it, not for the task."""
    depends_on: tuple[str, ...] = ()
    """Jobs (or their ids) that must end before this one runs (docs/workflows.md)."""
    allow_failed_dependencies: bool = False
    """Run even when a dependency did not succeed (else the job fails with
    ``DependencyFailed``)."""
    connection: Any = None
    """The caller's database connection to enqueue through, inside its transaction
    (docs/postgres.md); per call only (``.options(connection=conn)``), never encoded."""

    def merge(self, **changes: Any) -> Options:
        """A copy with ``changes``, each checked (type and range) and normalized here, once:
        a bad value is an ``InvalidOption`` naming it, before anything is written."""
        unknown = set(changes) - set(_RULES)
        if unknown:
            names = ", ".join(sorted(unknown))
            raise InvalidOption(
                f"unknown option(s) {names}; valid options: "
                + ", ".join(f.name for f in dataclasses.fields(self))
            )
        if changes.get("delay") is not None and changes.get("eta") is not None:
            raise InvalidOption(
                f"bad delay={changes['delay']!r} with eta={changes['eta']!r}: give one of them "
                "(delay= is how long from now, eta= the time to run at)"
            )
        checked = {name: _RULES[name](value) for name, value in changes.items()}
        # The later of the two wins: a call's delay= over a task's eta=. Read from what was
        # given: delay=0 (now) is kept as None, and still replaces an eta.
        if changes.get("delay") is not None:
            checked["eta"] = None
        elif checked.get("eta") is not None:
            checked["delay"] = None
        merged = dataclasses.replace(self, **checked)
        merged.check()
        return merged

    def check(self) -> None:
        """What no single option says: how options go together."""
        if self.depends_on and (self.delay or self.eta is not None):
            raise InvalidOption(
                "depends_on= cannot be combined with delay= or eta=: a job with dependencies "
                "runs when the last of them ends; delay the dependencies instead"
            )
        if self.rate is not None and self.rate_key is not None:
            check_rate_key_length(self.rate, self.rate_key)  # fits its counters' keys


# -- one rule per option: check the value given, return what Options keeps ----------------

MAX_RETRIES = 10_000  # more than a year of retries at the longest backoff (an hour)


def _optional(rule: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else rule(value)


def _eta(value: Any) -> float:
    example = "eta=datetime.now(UTC) + timedelta(hours=1), or delay=3600"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise refuse("eta", value, "eta must be timezone-aware", example)
        seconds = value.timestamp()  # the same range as a number's (1 AD was let through)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    else:
        seconds = math.nan
    if math.isfinite(seconds) and 0 <= seconds <= MAX_TIMESTAMP:
        return float(seconds)
    rule = (
        "eta takes a timezone-aware datetime or a Unix timestamp in seconds, from 1970 to "
        "9999-12-31 23:59:59 UTC"
    )
    raise refuse("eta", value, rule, example)


def _retry_on(value: Any) -> tuple[type[BaseException], ...]:
    types = (value,) if isinstance(value, type) else value
    if isinstance(types, list | tuple | set | frozenset) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in types
    ):
        return tuple(types)
    rule = "retry_on takes exception classes (not their names), one or a list"
    raise refuse("retry_on", value, rule, "retry_on=(TimeoutError, ConnectionError)")


def _rate_key(value: Any) -> str:
    try:
        return check_key(value)
    except InvalidName:
        raise InvalidName(
            f"bad rate_key={value!r}: use 1-512 printable characters (no control characters), "
            "e.g. rate_key=f'tenant:{tenant_id}'"
        ) from None


def _rate(value: Any) -> str:
    if not isinstance(value, str):
        raise refuse("rate", value, "rate takes a str such as '100/m'", "rate='100/m'")
    parse_rate(value)
    return value


def _job_ids(value: Any) -> tuple[str, ...]:
    """``depends_on=``: one ``Job`` or id, or an iterable of them, as unique ids in order."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) or hasattr(value, "id") else value
    try:
        found = list(items)
    except TypeError:
        found = [value]
    ids: dict[str, None] = {}
    for item in found:
        job_id = item if isinstance(item, str) else getattr(item, "id", None)
        if not isinstance(job_id, str):
            raise refuse(
                "depends_on",
                value,
                f"depends_on takes Job objects or job ids (one or a list), not {item!r}",
                "depends_on=[first_job, second_job]",
            )
        try:
            ids[validate_job_id(job_id)] = None
        except InvalidName as exc:
            raise InvalidName(f"bad depends_on={value!r}: {exc}") from None
    return tuple(ids)


_RULES: dict[str, Callable[[Any], Any]] = {
    "queue": validate_queue,
    "priority": validate_priority,
    "retries": lambda v: whole("retries", v, 0, MAX_RETRIES, "retries=3"),
    "retry_on": _retry_on,
    "backoff": lambda v: seconds(
        "backoff", v, example="backoff=2 (the first retry waits a random time below it)"
    ),
    "timeout": _optional(
        lambda v: seconds("timeout", v, strictly=True, example="timeout=30, or None for none")
    ),
    "result_ttl": lambda v: math.ceil(
        seconds("result_ttl", v, least=1, example="result_ttl=3600 or timedelta(hours=1)")
    ),
    "delay": _optional(
        lambda v: seconds("delay", v, example="delay=60 or timedelta(minutes=1)") or None
    ),
    "eta": _optional(_eta),
    "key": _optional(check_key),
    "job_id": _optional(validate_job_id),
    "rate": _optional(_rate),
    "rate_key": _optional(_rate_key),
    "depends_on": _job_ids,
    "allow_failed_dependencies": lambda v: flag("allow_failed_dependencies", v),
    "connection": lambda v: v,  # checked by the broker that writes through it
}


def callable_name(fn: Callable[..., Any]) -> str:
    """``module:qualname``, the name a worker imports a callable by. A callable that name
    does not lead back to (a lambda, a closure, a bound method, a ``partial``, ...) is
    refused here, with the reason, rather than run as something else or dead-lettered."""
    if isinstance(fn, Task):
        return fn.name
    try:
        return _importable_name(fn)
    except TypeError:  # unhashable: checked without the cache
        return _importable_name.__wrapped__(fn)


@functools.lru_cache(maxsize=1024)  # by identity: a function's name is resolved once
def _importable_name(fn: Callable[..., Any]) -> str:
    why = _not_importable(fn)
    if why is not None:
        raise ValidationError(f"cannot enqueue {shown(fn)}: {why}")
    return f"{fn.__module__}:{fn.__qualname__}"


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")  # what a worker resolves
_MODULE_LEVEL = "define it with def at module level (or register it with @app.task)"


def _not_importable(fn: Any) -> str | None:
    """Why a worker importing ``fn`` by its name would not find ``fn``; None if it would."""
    if isinstance(fn, functools.partial):
        return (
            "a functools.partial has no name a worker can import; enqueue its function "
            "with all the arguments: app.enqueue(p.func, *p.args, **p.keywords)"
        )
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, type | types.ModuleType):
        return (
            f"it is a method bound to an object ({type(owner).__qualname__}), which a worker "
            "would not have; enqueue a module-level function that takes (or loads) what the "
            "method needs"
        )
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        kind = type(fn).__qualname__
        return f"an object of type {kind} has no name a worker can import; {_MODULE_LEVEL}"
    if "<lambda>" in qualname:
        return f"a lambda has no name a worker can import; {_MODULE_LEVEL}"
    if "<locals>" in qualname:
        return (
            f"{qualname} is defined inside a function, where a worker cannot import it; "
            f"{_MODULE_LEVEL}"
        )
    if module == "__main__":
        return (
            "it is defined in __main__, and a worker cannot import your script; move the "
            "function into a module, or register it with @app.task(name=...)"
        )
    parts = qualname.split(".")
    if (
        not _DOTTED.match(module)
        or not _DOTTED.match(qualname)
        or any(p.startswith("__") for p in parts)
    ):
        return f"{module}:{qualname} is not a name a worker resolves; {_MODULE_LEVEL}"
    try:
        found: Any = sys.modules.get(module) or importlib.import_module(module)
        for part in parts:
            found = getattr(found, part)
    except Exception:
        found = None
    if found is fn or (isinstance(found, Task) and found.fn is fn) or found == fn:
        return None
    return (
        f"its name {module}:{qualname} leads to {shown(found)}, not to it, so a worker "
        "would run something else; enqueue what the module itself holds under that name"
    )


class Signature(Generic[R]):
    """A task call not sent yet: ``resize.s("a.png", 640)``, for batches and workflows."""

    def __init__(
        self, app: Conveyor, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValidationError(f"bad task name {name!r}: a task's name is a non-empty str")
        if not isinstance(args, tuple | list):
            raise ValidationError(f"bad arguments {args!r} for {name}: pass a tuple or a list")
        if not isinstance(kwargs, dict) or (kwargs and not all(type(k) is str for k in kwargs)):
            raise ValidationError(
                f"bad keyword arguments {kwargs!r} for {name}: pass a dict with str keys"
            )
        if not isinstance(opts, Options):
            raise ValidationError(f"bad options {opts!r} for {name}: pass app.defaults")
        self.app = app
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.opts = opts

    def delay(self) -> Job[R]:
        """Queue this call and return its ``Job`` at once."""
        return self.app._send([self])[0]

    def __repr__(self) -> str:
        return f"<Signature {self.name}{self.args!r}>"


class Task(Generic[P, R]):
    """A function registered with ``@app.task``; calling it runs it here, ``.delay`` queues it."""

    def __init__(self, app: Conveyor, fn: Callable[P, Any], name: str, opts: Options) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.opts = opts
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A call to send later. Its arguments may be partial: in a chain, the previous
        step's result is prepended; in a chord, the group's list is."""
        return Signature(self.app, self.name, args, dict(kwargs), self.opts)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Queue a call with the task's options and return its ``Job`` at once. An argument
        or option that is refused raises here (``ValidationError``), and nothing is written."""
        return self.app._send([self.s(*args, **kwargs)])[0]

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """``delay`` for asyncio code: it does not block the event loop."""
        return (await self.app._send_async([self.s(*args, **kwargs)]))[0]

    def options(self, **opts: Any) -> Task[P, R]:
        """A copy of this task with options changed for the calls made through it."""
        return Task(self.app, self.fn, self.name, self.opts.merge(**opts))

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
