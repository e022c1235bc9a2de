"""One delivery being worked on, and what running it produced.

An ``Attempt`` moves ``running -> completed -> (finished)`` or ``running -> released``; the
moves happen under the in-flight lock (``_inflight.py``), so a job finishing exactly while a
shutdown hands it back is either finished or released, never both.

Results are small picklable values because the process pool sends them over a pipe: a
success is its encoded outcome's bytes, a failure or a stop a plain class with ``__slots__``
rather than a dataclass (building a dataclass compiles its methods at import, ~4 M
instructions each before a worker's first job).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import CoroutineType
from typing import Any

import msgspec

from .._codec import Codec
from .._context import CurrentJob, set_current_job
from .._errors import ResultTooLarge, SerializationError
from .._message import Delivery, Message, Outcome, RemoteError
from ..middleware import Run
from ._describe import Interrupted, describe, lineage, name_of

_new = object.__new__

RUNNING = "running"
COMPLETED = "completed"
RELEASED = "released"

CANCEL = "cancel"  # cancel() was called on the running job
TIMEOUT = "timeout"  # the job ran past message.timeout
SHUTDOWN = "shutdown"  # the grace period ended; the job is handed back


class _Value:
    """Value semantics from ``__slots__``: the repr, equality and hash a dataclass has."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())


class Raised(_Value):
    """The task raised. ``types`` are the qualified names of the type and its bases."""

    __slots__ = ("error", "types")

    def __init__(self, error: RemoteError, types: tuple[str, ...]) -> None:
        self.error = error
        self.types = types


class Stopped(_Value):
    """The worker stopped the job (cancel or shutdown) before it ended by itself."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


# The task returned: the encoded ``Outcome`` itself, no object around it (a success is
# almost every job's result, and a class call cost ~1,500 instructions per job).
Returned = bytes
Result = Returned | Raised | Stopped


class Attempt:
    __slots__ = (
        "began",
        "delivery",
        "error",
        "fn",
        "handle",
        "is_async",
        "lock",
        "lost",
        "message",
        "run",
        "slot",
        "started",
        "state",
        "stop",
    )

    def __init__(self, delivery: Delivery, fetched: float | None = None) -> None:
        """``fetched``: when its fetch returned (``time.monotonic()``), read once for all
        of a fetch's deliveries; None reads the clock now."""
        self.delivery = delivery
        self.message: Message | None = None
        self.fn: Callable[..., Any] | None = None
        self.is_async = False
        self.state = RUNNING
        self.stop: str | None = None  # why the worker wants the job stopped, first reason wins
        self.lost = False  # renew said the lease is gone; our finish will be refused
        self.error: RemoteError | None = None  # what the run raised, for the worker's log line
        self.slot = False  # holds one of the worker's run slots (``_inflight.py``)
        self.started = time.monotonic() if fetched is None else fetched
        self.began = 0.0  # handed to a pool (time.monotonic())
        self.lock = threading.Lock()
        # Set by the pool running the job: the thread, the asyncio task, or the child process.
        self.handle: Any = None
        self.run: Run | None = None  # what the run hooks saw (middleware: ``_middleware.py``)

    @property
    def name(self) -> str:
        return self.message.task if self.message is not None else "?"

    @property
    def job_id(self) -> str:
        return self.delivery.id


def raised(exc: BaseException) -> Raised:
    """Describe an exception for the result store: type, message, formatted traceback.
    Never raises (except ``Interrupted``), whatever the exception does (``_describe``)."""
    return Raised(*describe(exc))


def synthetic(exc_type: type[BaseException], message: str) -> Raised:
    """A failure the worker observed rather than caught (a child process died or was killed)."""
    return Raised(RemoteError(type=name_of(exc_type), message=message), lineage(exc_type))


class Results:
    """Turns what a task returned into a ``Result`` for the result store: the codec, and the
    cap on the encoded size (``Conveyor(max_result=...)``)."""

    __slots__ = ("codec", "max_result")

    def __init__(self, codec: Codec, max_result: int) -> None:
        self.codec = codec
        self.max_result = max_result

    def returned(self, task: str, value: Any) -> Result:
        """Encode a return value. A value that cannot be stored (not encodable, its encoding
        raised, over the cap, a coroutine nobody awaited) fails the job instead; never
        raises, except ``Interrupted``."""
        if type(value) is CoroutineType:  # not subclassable: the exact check is complete
            return _coroutine(task, value)
        try:
            data = self.codec.encode_outcome(Outcome(value=value))
        except Interrupted:
            raise
        except BaseException as exc:
            return _unstorable(exc)
        if len(data) > self.max_result:
            return raised(ResultTooLarge(
                f"the task's result encodes to {len(data):,} bytes, over the "
                f"{self.max_result:,}-byte cap on results; store large results elsewhere "
                "(a file, object store or app.store) and return their key, or raise "
                "Conveyor(max_result=...)"
            ))  # fmt: skip
        return data


def _unstorable(exc: BaseException) -> Raised:
    if issubclass(type(exc), SerializationError):  # not isinstance: that reads __class__
        why = describe(exc)[0].message
    else:  # the value's own code raised while being encoded (__iter__, __reduce__, ...)
        error = describe(exc)[0]
        why = f"encoding it raised {error.type}: {error.message}"
    wrapped = SerializationError(
        f"the task returned a value that cannot be stored as its result: {why}"
    )
    wrapped.__cause__ = exc  # the traceback shows where the value's code raised
    return raised(wrapped)


def _coroutine(task: str, value: Any) -> Raised:
    try:
        value.close()  # never started: no "coroutine was never awaited" warning later
    except Interrupted:
        raise
    except BaseException:
        pass
    return raised(TypeError(
        f"task {task} returned a coroutine instead of a value: declare it `async def` so "
        "the worker awaits it (a decorator that wraps an async function in a plain `def` "
        "hides that), or await the coroutine inside the task"
    ))  # fmt: skip


def make_current_job(
    message: Message, delivery: Delivery, report: Callable[[float, str | None], None]
) -> CurrentJob:
    """The job's ``CurrentJob``, with the attributes its ``__init__`` sets, set here: calling
    a class with keywords costs twice what the attributes do, and every job makes one."""
    job: CurrentJob = _new(CurrentJob)
    job.id = message.id
    job.task = message.task
    job.queue = message.queue
    job.attempt = message.attempt
    job.deliveries = delivery.deliveries
    job._report = report
    return job


def invoke(fn: Callable[..., Any], message: Message, job: CurrentJob) -> Any:
    """Call a sync task in this thread with ``current_job`` set; what it raises propagates."""
    set_current_job(job)
    try:
        return fn(*message.args, **message.kwargs)
    finally:
        set_current_job(None)


def call(fn: Callable[..., Any], message: Message, job: CurrentJob, results: Results) -> Result:
    """Run a sync task in this thread with ``current_job`` set. ``Interrupted`` propagates."""
    try:
        value = invoke(fn, message, job)
    except Interrupted:
        raise
    except BaseException as exc:  # SystemExit in a task is that task's failure, not ours
        return raised(exc)
    return results.returned(message.task, value)


async def acall(
    fn: Callable[..., Any], message: Message, job: CurrentJob, results: Results
) -> Result:
    """Await an async task with ``current_job`` set (in the task's own context).
    ``CancelledError`` propagates: the caller knows why it cancelled."""
    set_current_job(job)
    try:
        value = await fn(*message.args, **message.kwargs)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return raised(exc)
    finally:
        set_current_job(None)  # what runs next in this asyncio task is the worker's, not the job's
    return results.returned(message.task, value)


def timed_out(result: Result, timeout: float | None, hard: bool = False) -> Result:
    """Give a time-limit failure a message that says what happened."""
    if isinstance(result, Raised) and not result.error.message:
        what = "the process running it was killed" if hard else "it was interrupted"
        text = f"the job ran past its time limit of {timeout} s; {what}"
        return Raised(msgspec.structs.replace(result.error, message=text), result.types)
    return result
