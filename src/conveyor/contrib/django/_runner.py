"""Django tasks as Conveyor tasks: how a worker runs one.

A Django task (``@task`` of the Tasks framework, on a ``ConveyorBackend``) is registered
with the project's app when it is defined, under the name Conveyor gives any function
(``module:qualname``), so its jobs look like any other in ``conveyor info``, the events and
the metrics. What is registered is a *runner* that does what the framework asks of a worker:

* ``task_started`` before the call and ``task_finished`` after it, with a ``TaskResult``
  whose status is ``RUNNING``, then ``SUCCESSFUL`` or ``FAILED`` (the framework's log lines
  hang on these signals);
* the ``TaskContext`` for a task with ``takes_context=True``;
* the return value normalized to JSON types as the framework does (a tuple becomes a list,
  anything JSON cannot hold fails the task), then encoded as the worker will store it:
  a value the codec refuses (``float('nan')``, a dict with int keys) or one over
  ``MAX_RESULT`` fails the task, before ``task_finished``, which then says ``FAILED``.

The job's result is a small record (``RESULT_KEYS``): the return value with the task's
name, arguments, start time and worker, so ``get_result`` can answer on every broker (Redis
drops a succeeded job's payload). ``conveyor job ID`` shows that record.

An ``async def`` task runs on the worker's event loop inside its own
``ThreadSensitiveContext``, as Django runs an async request: the ORM calls it makes through
``sync_to_async`` go to a thread of this run only, whose connections are closed at the end.
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connections
from django.utils import timezone

from ..._context import current_job
from ..._errors import ConfigurationError, ResultTooLarge, SerializationError
from ..._message import Outcome
from ...worker._describe import describe
from .. import INTERRUPTIONS
from ._compat import (
    FAILED,
    RUNNING,
    SUCCESSFUL,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    normalize_json,
    task_finished,
    task_started,
)

if TYPE_CHECKING:
    from ..._app import Conveyor
    from ..._task import Task as ConveyorTask

RESULT_KEYS = ("django_task", "args", "kwargs", "started_at", "worker_id", "return_value")
_TASK = "django_task"  # the runner's attribute holding its Django task
_registering = threading.Lock()


def task_name(task: Task[Any, Any]) -> str:
    """The name a Django task's jobs carry: Conveyor's ``module:qualname`` of its function."""
    return f"{task.func.__module__}:{task.func.__qualname__}"


def register(app: Conveyor, task: Task[Any, Any], sender: type) -> ConveyorTask[Any, Any]:
    """The Conveyor task that runs ``task`` (registered on first call: the framework
    validates a task each time it is made, ``using()`` copies included)."""
    name = task_name(task)
    with _registering:  # two threads making their first copy of a task register it once
        found = app.registry.get(name)
        if found is None:
            found = app.task(name=name)(_runner(app, task, sender))
    known = django_task_of(found.fn)
    if known is None or known.func is not task.func:
        raise ConfigurationError(
            f"two different functions are registered as task {name!r}; rename one of them"
        )
    return found


def _runner(app: Conveyor, task: Task[Any, Any], sender: type) -> Callable[..., Any]:
    make = _async_runner if inspect.iscoroutinefunction(task.func) else _sync_runner
    run = make(app, task, sender)
    functools.update_wrapper(run, task.func)  # its module and name: logs, trust, describe
    setattr(run, _TASK, task)
    return run


def django_task_of(fn: Callable[..., Any]) -> Task[Any, Any] | None:
    """The Django task a registered function runs, or None for one of Conveyor's own."""
    found = getattr(fn, _TASK, None)
    return found if isinstance(found, Task) else None


def _sync_runner(app: Conveyor, task: Task[Any, Any], sender: type) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        result = _started(task, sender, args, kwargs)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            return _succeeded(app, result, sender, value)
        except INTERRUPTIONS:
            raise  # a cancel or a shutdown: the worker says what became of the job
        except BaseException as exc:
            _failed(result, sender, exc)
            raise

    return run


def _async_runner(app: Conveyor, task: Task[Any, Any], sender: type) -> Callable[..., Any]:
    async def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        async with ThreadSensitiveContext():
            try:
                result = _started(task, sender, args, kwargs)
                try:
                    if task.takes_context:
                        value = await task.acall(TaskContext(task_result=result), *args, **kwargs)
                    else:
                        value = await task.acall(*args, **kwargs)
                    return _succeeded(app, result, sender, value)
                except INTERRUPTIONS:
                    raise
                except BaseException as exc:
                    _failed(result, sender, exc)
                    raise
            finally:
                # The connections this run's sync_to_async calls opened, in their thread.
                await sync_to_async(connections.close_all)()

    return run


def _started(
    task: Task[Any, Any], sender: type, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> TaskResult[Any]:
    job = current_job()
    now = timezone.now()
    result: TaskResult[Any] = TaskResult(
        task=task,
        id=job.id,
        status=RUNNING,
        enqueued_at=None,
        started_at=now,
        last_attempted_at=now,
        finished_at=None,
        args=list(args),
        kwargs=kwargs,
        backend=task.backend,
        errors=[],
        worker_ids=[worker_id()],
    )
    task_started.send(sender=sender, task_result=result)
    return result


def _succeeded(app: Conveyor, result: TaskResult[Any], sender: type, value: Any) -> dict[str, Any]:
    """The job's result record; raises (and the runner says FAILED) if it cannot be stored."""
    value = normalize_json(value)
    assert result.started_at is not None  # set by _started
    record = {
        "django_task": task_name(result.task),
        "args": result.args,
        "kwargs": result.kwargs,
        "started_at": result.started_at.timestamp(),
        "worker_id": result.worker_ids[-1],
        "return_value": value,
    }
    _check_storable(app, record)
    object.__setattr__(result, "_return_value", value)
    _finish(result, sender, SUCCESSFUL)
    return record


def _check_storable(app: Conveyor, record: dict[str, Any]) -> None:
    """Encode the record as the worker will: a value it would refuse after the task returned
    (the job then fails) must fail it here, before task_finished says SUCCESSFUL."""
    try:
        data = app.codec.encode_outcome(Outcome(value=record))
    except SerializationError as exc:
        raise SerializationError(
            f"the task returned a value that cannot be stored as its result: {exc}"
        ) from exc
    if len(data) > app.max_result:
        raise ResultTooLarge(
            f"the task's result encodes to {len(data):,} bytes, over the {app.max_result:,}-byte "
            "cap on results (settings.CONVEYOR['MAX_RESULT']); store large results elsewhere "
            "(a file, object store or app.store) and return their key, or raise "
            "CONVEYOR['MAX_RESULT']"
        )


def _failed(result: TaskResult[Any], sender: type, exc: BaseException) -> None:
    error = describe(exc)[0]  # read with care: the exception is the task's own code
    result.errors.append(TaskError(exception_class_path=error.type, traceback=error.traceback))
    _finish(result, sender, FAILED)


def _finish(result: TaskResult[Any], sender: type, status: TaskResultStatus) -> None:
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "status", status)
    task_finished.send(sender=sender, task_result=result)


def worker_id() -> str:
    """Who ran a job, as ``TaskResult.worker_ids`` lists it: the host and process id."""
    return f"{socket.gethostname()}.{os.getpid()}"
