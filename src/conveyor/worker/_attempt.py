"""One delivery being worked on, and what running it produced.

An ``Attempt`` moves ``running -> completed -> (finished)`` or ``running -> released``; the
moves happen under the in-flight lock (``_inflight.py``), so a job finishing exactly while a
shutdown hands it back is either finished or released, never both.

Results are small picklable dataclasses because the process pool sends them over a pipe.
"""

from __future__ import annotations

import asyncio
import dataclasses
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

RUNNING = "running"
COMPLETED = "completed"
RELEASED = "released"

CANCEL = "cancel"  # cancel() was called on the running job
TIMEOUT = "timeout"  # the job ran past message.timeout
SHUTDOWN = "shutdown"  # the grace period ended; the job is handed back


@dataclasses.dataclass(frozen=True)
class Returned:
    """The task returned; ``result`` is the encoded ``Outcome``."""

    result: bytes


@dataclasses.dataclass(frozen=True)
class Raised:
    """The task raised. ``types`` are the qualified names of the type and its bases."""

    error: RemoteError
    types: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Stopped:
    """The worker stopped the job (cancel or shutdown) before it ended by itself."""

    why: str


Result = Returned | Raised | Stopped


@dataclasses.dataclass(eq=False)
class Attempt:
    delivery: Delivery
    message: Message | None = None
    fn: Callable[..., Any] | None = None
    is_async: bool = False
    state: str = RUNNING
    stop: str | None = None  # why the worker wants the job stopped, first reason wins
    lost: bool = False  # renew said the lease is gone; our finish will be refused
    error: RemoteError | None = None  # what the run raised, for the worker's log line
    slot: bool = False  # holds one of the worker's run slots (``_inflight.py``)
    started: float = dataclasses.field(default_factory=time.monotonic)  # fetched
    began: float = 0.0  # handed to a pool (time.monotonic())
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # Set by the pool running the job: the thread, the asyncio task, or the child process.
    handle: Any = None
    run: Run | None = None  # what the run hooks saw (only with middleware, ``_middleware.py``)

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


@dataclasses.dataclass(frozen=True)
class Results:
    """Turns what a task returned into a ``Result`` for the result store: the codec, and the
    cap on the encoded size (``Conveyor(max_result=...)``)."""

    codec: Codec
    max_result: int

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
        return Returned(data)


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
    return CurrentJob(
        job_id=message.id,
        task=message.task,
        queue=message.queue,
        attempt=message.attempt,
        deliveries=delivery.deliveries,
        report=report,
    )


def call(fn: Callable[..., Any], message: Message, job: CurrentJob, results: Results) -> Result:
    """Run a sync task in this thread with ``current_job`` set. ``Interrupted`` propagates."""
    set_current_job(job)
    try:
        value = fn(*message.args, **message.kwargs)
    except Interrupted:
        raise
    except BaseException as exc:  # SystemExit in a task is that task's failure, not ours
        return raised(exc)
    finally:
        set_current_job(None)
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
