"""Tasks, signatures and per-call options.

``Task[P, R]`` keeps the wrapped function's signature, so ``resize.delay("a.png", "wide")``
is a type error when ``resize`` takes ``(str, int)``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._errors import ConfigurationError, ValidationError
from ._message import DEFAULT_QUEUE, validate_job_id, validate_priority, validate_queue
from .ratelimit import parse_rate
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
    priority: int = 0
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    backoff: float = 1.0
    timeout: float | None = None
    result_ttl: int = 86400
    delay: float | None = None
    eta: float | None = None
    key: str | None = None
    job_id: str | None = None
    rate: str | None = None
    rate_key: str | None = None
    # Jobs (or their ids) that must end before this one runs; see docs/workflows.md.
    depends_on: tuple[str, ...] = ()
    allow_failed_dependencies: bool = False

    def merge(self, **changes: Any) -> Options:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            names = ", ".join(sorted(unknown))
            raise ConfigurationError(
                f"unknown option(s) {names}; valid options: "
                + ", ".join(f.name for f in dataclasses.fields(self))
            )
        changes = {k: _normalize(k, v) for k, v in changes.items()}
        merged = dataclasses.replace(self, **changes)
        merged.check()
        return merged

    def check(self) -> None:
        validate_queue(self.queue)
        if self.rate is not None:
            parse_rate(self.rate)
        if self.rate_key is not None:
            check_key(self.rate_key)
        validate_priority(self.priority)
        if self.retries < 0:
            raise ConfigurationError("retries must be >= 0")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        if self.result_ttl <= 0:
            raise ConfigurationError("result_ttl must be a positive number of seconds")
        if self.depends_on and (self.delay or self.eta is not None):
            raise ConfigurationError(
                "depends_on= cannot be combined with delay= or eta=: a job with dependencies "
                "runs when the last of them ends; delay the dependencies instead"
            )
        for exc_type in self.retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(f"retry_on takes exception types, got {exc_type!r}")


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigurationError(f"{name} takes seconds or a timedelta, got {value!r}")


def _normalize(name: str, value: Any) -> Any:
    if name in ("delay", "timeout", "backoff"):
        return _seconds(value, name)
    if name == "result_ttl":
        seconds = _seconds(value, name)
        return int(seconds) if seconds is not None else value
    if name == "eta" and isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ConfigurationError("eta must be timezone-aware (e.g. datetime.now(UTC))")
        return value.timestamp()
    if name == "depends_on":
        return _job_ids(value)
    if name == "retry_on":
        if isinstance(value, type):
            return (value,)
        return tuple(value) if isinstance(value, Sequence) else value
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
            raise ConfigurationError(
                f"depends_on takes Job objects or job ids (one or a list), got {item!r}"
            )
        ids[validate_job_id(job_id)] = None
    return tuple(ids)


def callable_name(fn: Callable[..., Any]) -> str:
    """``module:qualname``, the name a worker imports a callable by."""
    if isinstance(fn, Task):
        return fn.name
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValidationError(
            f"cannot enqueue {fn!r}: pass a module-level function or method a worker can "
            "import (not a lambda, closure or builtin bound to an object)"
        )
    if module == "__main__":
        raise ValidationError(
            f"cannot enqueue {qualname} from __main__: a worker cannot import your script; "
            "move the function into a module, or register it with @app.task(name=...)"
        )
    return f"{module}:{qualname}"


class Signature(Generic[R]):
    """A task call not sent yet: ``resize.s("a.png", 640)``, for batches and workflows."""

    def __init__(
        self, app: Conveyor, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> None:
        self.app = app
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.opts = opts

    def delay(self) -> Job[R]:
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
        return self.app._send([self.s(*args, **kwargs)])[0]

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        return (await self.app._send_async([self.s(*args, **kwargs)]))[0]

    def options(self, **opts: Any) -> Task[P, R]:
        """A copy of this task with options changed for the calls made through it."""
        return Task(self.app, self.fn, self.name, self.opts.merge(**opts))

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
