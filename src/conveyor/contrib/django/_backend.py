"""``ConveyorBackend``: the Tasks framework's backend that sends tasks to Conveyor.

=========================  =================================================================
framework                  Conveyor
=========================  =================================================================
``task.enqueue(*a, **k)``  a job of the task's runner (``_runner``), with these arguments
``aenqueue``               the same through ``delay_async``: nothing blocks the event loop
``TaskResult.id``          the job id (``get_app().job(result.id)`` is the same job)
``queue_name``             the job's queue (in ``QUEUES``, and a valid Conveyor queue name)
``priority`` -100..100     Conveyor's priority 0..9 in bands of 20 (``conveyor_priority``)
``run_after``              the job's ``eta``: scheduled until then
``get_result(id)``         the job's record and payload, read as a ``TaskResult`` (``_results``)
=========================  =================================================================

Sending on commit (``OPTIONS["ENQUEUE"] = "on_commit"``, the default) is Django's
``transaction.on_commit`` on ``OPTIONS["DATABASE"]``: inside ``atomic()`` the job is sent
when the outermost block commits, and never if it rolls back; outside one it is sent at
once. ``enqueue`` returns the ``TaskResult`` at once either way, with the id the job will
have; a job that cannot be encoded (an argument, its size) raises from ``enqueue`` in every
mode. ``"now"`` sends at once, inside a transaction too. ``"transaction"`` writes the job
through Django's own connection to ``DATABASE``, inside its open transaction: the PostgreSQL
broker in that same database (``postgresql://``) only; workers see the job when the
transaction commits, and a rollback takes it away with the rest.
"""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from ..._errors import ConfigurationError, InvalidName
from ..._message import Outcome, new_job_id, validate_job_id, validate_queue
from ...worker._resolve import top_package
from ._compat import (
    READY,
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    task_enqueued,
)
from ._results import ran, task_result
from ._runner import django_task_of, register
from ._settings import get_app

if TYPE_CHECKING:
    from ..._app import Conveyor
    from ..._task import Task as ConveyorTask

P = ParamSpec("P")
T = TypeVar("T")

ENQUEUE_MODES = ("on_commit", "now", "transaction")
OPTIONS = ("ENQUEUE", "DATABASE")


def conveyor_priority(priority: int) -> int:
    """The framework's priority (-100 lowest to 100 highest, 0 by default) as Conveyor's (0
    lowest to 9 highest), in bands of 20: -100..-81 is 0, -20..-1 is 4, 0..19 is 5 (so the
    framework's default is 5), 80..100 is 9."""
    # The framework takes any whole number, 50.0 too; Conveyor's priority is an int.
    return min((int(priority) + 100) // 20, 9)


class ConveyorBackend(BaseTaskBackend):
    """Runs the framework's tasks as Conveyor jobs on ``settings.CONVEYOR``'s app. See the
    module docstring for what maps to what, and docs/django.md."""

    supports_defer = True  # run_after
    supports_async_task = True  # async def tasks run on the worker's event loop
    supports_get_result = True  # from any process: the broker holds the job
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.app: Conveyor = get_app()
        where = f"TASKS[{alias!r}]"
        options = params.get("OPTIONS") or {}
        unknown = sorted(str(k) for k in options if k not in OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) in {where}['OPTIONS']: {', '.join(unknown)}; the options "
                f"are {', '.join(OPTIONS)}"
            )
        self.enqueue_mode: str = options.get("ENQUEUE", "on_commit")
        if self.enqueue_mode not in ENQUEUE_MODES:
            raise ConfigurationError(
                f"bad {where}['OPTIONS']['ENQUEUE']={self.enqueue_mode!r}: use 'on_commit' (send "
                "the job when the transaction commits), 'now', or 'transaction' (write it in "
                "the transaction, on the PostgreSQL broker in the same database)"
            )
        self.database: str = options.get("DATABASE", DEFAULT_DB_ALIAS)
        if self.enqueue_mode == "transaction" and not self.app.url.startswith("postgres"):
            raise ConfigurationError(
                f"{where}['OPTIONS']['ENQUEUE'] is 'transaction', which writes jobs in the "
                "database's own transaction: it needs settings.CONVEYOR['URL'] to be the "
                "postgresql:// URL of that database; use 'on_commit' on other brokers"
            )
        if self.enqueue_mode != "now" and self.database not in settings.DATABASES:
            raise ConfigurationError(
                f"{where}['OPTIONS']['DATABASE'] is {self.database!r}, which is not in "
                "settings.DATABASES: name the database whose transactions the jobs wait "
                "for, or set 'ENQUEUE': 'now'"
            )
        if self.enqueue_mode == "transaction":
            _check_postgresql(where, self.database)
        for queue in self.queues:
            try:
                validate_queue(queue)
            except InvalidName as exc:
                raise ConfigurationError(f"{where}['QUEUES']: {exc}") from None

    # -- the framework's contract ------------------------------------------------------------

    def validate_task(self, task: Task[Any, Any]) -> None:
        super().validate_task(task)
        try:
            validate_queue(task.queue_name)
        except InvalidName as exc:
            raise InvalidTask(str(exc)) from None
        register(self.app, task, type(self))

    def enqueue(
        self,
        task: Task[P, T],
        args: P.args,  # type: ignore[valid-type]
        kwargs: P.kwargs,  # type: ignore[valid-type]
    ) -> TaskResult[T]:
        self.validate_task(task)
        result, job = self._job(task, args, kwargs)
        if self.enqueue_mode == "transaction":
            connection = connections[self.database]
            connection.ensure_connection()  # the broker takes it as it is, open
            job = job.options(connection=connection)
        send = _sender(self, job, result)
        if self.enqueue_mode == "on_commit":
            if connections[self.database].in_atomic_block:  # else on_commit sends at once
                _check(self.app, job, result)
            transaction.on_commit(send, using=self.database)
        else:
            send()
        return result

    async def aenqueue(
        self,
        task: Task[P, T],
        args: P.args,  # type: ignore[valid-type]
        kwargs: P.kwargs,  # type: ignore[valid-type]
    ) -> TaskResult[T]:
        # Sent at once in every mode: Django's transactions are sync only, so async code
        # holds none to wait for or to write in.
        self.validate_task(task)
        result, job = self._job(task, args, kwargs)
        await job.delay_async(*result.args, **result.kwargs)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The job ``result_id`` as a ``TaskResult``; ``TaskResultDoesNotExist`` if there is
        no such job (never sent, rolled back, purged, or its record expired) or it is not a
        Django task's."""
        app = self.app
        try:
            validate_job_id(result_id)
        except InvalidName:
            raise TaskResultDoesNotExist(result_id) from None
        record = app.broker.get([result_id])[0]
        if record is None:
            raise TaskResultDoesNotExist(result_id)
        payload = app.broker.payload(result_id)
        message = app.codec.decode_message(payload) if payload else None
        outcome = app.codec.decode_outcome(record.result) if record.result else None
        name = message.task if message is not None else _ran_name(outcome)
        task = self._task(name) if name else None
        if task is None:
            raise TaskResultDoesNotExist(
                f"{result_id} is the id of a job of {name or 'an unknown task'}, not of a "
                "Django task"
            )
        return task_result(self.alias, task, record, message, outcome)

    async def aget_result(self, result_id: str) -> TaskResult[Any]:
        # Off the thread Django keeps for the ORM: reading the broker blocks.
        found: TaskResult[Any] = await sync_to_async(self.get_result, thread_sensitive=False)(
            result_id
        )
        return found

    # -- helpers -------------------------------------------------------------------------------

    def _job(
        self, task: Task[Any, T], args: Any, kwargs: Any
    ) -> tuple[TaskResult[T], ConveyorTask[..., Any]]:
        """The ``TaskResult`` an enqueue returns (its arguments normalized to JSON types, as
        the framework does, which refuses what JSON cannot hold) and the job to send."""
        job_id = new_job_id()
        result: TaskResult[T] = TaskResult(
            task=task,
            id=job_id,
            status=READY,
            enqueued_at=timezone.now(),
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        options: dict[str, Any] = {
            "queue": task.queue_name,
            "priority": conveyor_priority(task.priority),
            "job_id": job_id,
        }
        if task.run_after is not None:
            options["eta"] = _aware(task.run_after)
        return result, register(self.app, task, type(self)).options(**options)

    def _task(self, name: str) -> Task[Any, Any] | None:
        """The Django task whose jobs carry ``name``, importing its module if it is one of an
        installed app or of a trusted package (``TRUST``); None if it is not a Django task."""
        registered = self.app.registry.get(name)
        if registered is None:
            module = name.partition(":")[0]
            allowed = apps.get_containing_app_config(module) is not None or (
                top_package(module) in self.app.trust
            )
            if not allowed or module in sys.modules:
                return None
            try:
                importlib.import_module(module)
            except ImportError:
                return None
            registered = self.app.registry.get(name)
        return django_task_of(registered.fn) if registered is not None else None


def _sender(
    backend: ConveyorBackend, job: ConveyorTask[..., Any], result: TaskResult[Any]
) -> Callable[[], None]:
    def send() -> None:
        job.delay(*result.args, **result.kwargs)
        task_enqueued.send(type(backend), task_result=result)

    return send


def _check(app: Conveyor, job: ConveyorTask[..., Any], result: TaskResult[Any]) -> None:
    """Encode the job as it will be sent, to refuse it now (``SerializationError``,
    ``PayloadTooLarge``) as "now" does: raised from the commit, the error would come after
    the data was committed, and Django would drop the transaction's later callbacks, jobs
    that were fine included. The commit sends it through ``delay`` all the same, so that
    the producer middleware sees it when it is sent, and never for a rollback."""
    app.envelope(job.s(*result.args, **result.kwargs))


def _check_postgresql(where: str, database: str) -> None:
    """The mode "transaction" writes jobs through Django's connection to ``database``:
    refused at start unless it is PostgreSQL, rather than at the first enqueue, with an
    error about a ``connection=`` the project never wrote."""
    vendor = connections[database].vendor  # the backend's class: nothing is opened
    if vendor != "postgresql":
        raise ConfigurationError(
            f"{where}['OPTIONS']['ENQUEUE'] is 'transaction', which writes jobs through "
            f"Django's connection to {where}['OPTIONS']['DATABASE'] ({database!r}), a "
            f"{vendor} database: it takes the PostgreSQL database of settings.CONVEYOR"
            "['URL']; name that alias in 'DATABASE', or use 'ENQUEUE': 'on_commit'"
        )


def _ran_name(outcome: Outcome | None) -> str | None:
    done = ran(outcome)
    return str(done["django_task"]) if done else None


def _aware(moment: dt.datetime) -> dt.datetime:
    """``run_after`` as an aware datetime: a naive one (``USE_TZ = False``) is in the local
    time of ``TIME_ZONE``, as Django reads naive datetimes then."""
    if timezone.is_aware(moment):
        return moment
    aware: dt.datetime = timezone.make_aware(moment, timezone.get_default_timezone())
    return aware
