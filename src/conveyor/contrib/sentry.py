"""Failed and dead-lettered jobs reported to Sentry (``pip install 'conveyor[sentry]'``).

::

    import sentry_sdk
    from conveyor.contrib.sentry import SentryMiddleware

    sentry_sdk.init(dsn=...)   # where the worker imports the app, as usual
    app = Conveyor(url, middleware=[SentryMiddleware()])

One Sentry event per job that failed for good (no retry left, or not retried) and per
dead letter, tagged ``conveyor.task``, ``.queue``, ``.status`` and ``.job_id``, with the job
(its attempt, retries, reason, duration, and its arguments unless ``include_args=False``)
as the ``conveyor job`` context. An attempt that will
be retried is not reported unless ``report_retries=True`` (then at level ``warning``).

``include_args=False`` also keeps the arguments out of the stack: Sentry sends each frame's
local variables (``include_local_variables``, on by default), and the task's frame holds
its parameters, Conveyor's frames the job's message. So every frame of these reports, and
of any event sent from inside a run (the task's own ``capture_exception``, a logged
error), goes without its ``vars``; function names, files and line numbers stay. With
``include_args=True`` frame locals follow Sentry's own setting.

The exception reported is the one the task raised when it ran in the worker process (with
its stack); with ``--pool processes``, or when a child was killed at its time limit, it is
a ``TaskFailed`` whose remote traceback is in the context, grouped by task and remote
exception type. A dead letter is a message event with its reason.

Each run has a Sentry isolation scope of its own (forked from the one its thread or task
had, as Sentry's own Celery integration does): what a task sets (``sentry_sdk.set_user``,
``set_tag``, breadcrumbs) goes with that job's event, never with a later job's that runs on
the same thread.

Reports are made in the worker process (never in a child): ``sentry_sdk.init`` must run
there, and it does when it sits next to the app. Sentry's logging integration also turns
the worker's ERROR lines into events, a dead letter's among them; to have one event per
dead letter, ``sentry_sdk.integrations.logging.ignore_logger("conveyor.worker")``.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any, cast

from .._errors import TaskFailed
from ..middleware import Message, Middleware, Outcome, Run
from . import INTERRUPTIONS, described, readable, require

__all__ = ["SentryMiddleware"]

_KEPT_MAX = 10_000  # runs' scopes kept for their outcome; past it the oldest go


class SentryMiddleware(Middleware):
    """Reports failures and dead letters to Sentry (see the module docstring)."""

    def __init__(self, include_args: bool = True, report_retries: bool = False) -> None:
        self._sentry: Any = require("sentry_sdk", "sentry", user="conveyor.contrib.sentry")
        self.include_args = include_args
        self.report_retries = report_retries
        # By job id: the scope a run entered (until it ends), then the scope it wrote in
        # (until the worker reports its outcome, from another thread).
        self._running: dict[str, tuple[AbstractContextManager[Any], Any]] = {}
        self._kept: dict[str, Any] = {}
        self._outcome = threading.local()  # (job id, its run's scope) of the outcome at hand

    def before_run(self, message: Message) -> None:
        entered = self._sentry.isolation_scope()
        scope = entered.__enter__()
        if not self.include_args:  # what the task sends itself has its arguments as locals
            scope.add_event_processor(_without_locals)
        self._running[message.id] = (entered, scope)

    def after_run(self, message: Message, run: Run) -> None:
        running = self._running.pop(message.id, None)
        if running is None:
            return
        entered, kept = running
        entered.__exit__(None, None, None)
        if len(self._kept) >= _KEPT_MAX:  # outcomes never reported (a worker cut short)
            del self._kept[next(iter(self._kept))]
        self._kept[message.id] = kept

    def on_outcome(self, message: Message | None, outcome: Outcome) -> None:
        self._outcome.kept = (outcome.job_id, self._kept.pop(outcome.job_id, None))

    def on_failure(self, message: Message, outcome: Outcome) -> None:
        self._report(message, outcome, "error")

    def on_dead_letter(self, message: Message | None, outcome: Outcome) -> None:
        self._report(message, outcome, "error")

    def on_retry(self, message: Message, outcome: Outcome) -> None:
        if self.report_retries:
            self._report(message, outcome, "warning")

    def _report(self, message: Message | None, outcome: Outcome, level: str) -> None:
        job_id, run_scope = getattr(self._outcome, "kept", (None, None))
        if run_scope is not None and job_id == outcome.job_id:
            with self._sentry.scope.use_isolation_scope(run_scope):
                self._capture(message, outcome, level)
        else:
            self._capture(message, outcome, level)

    def _capture(self, message: Message | None, outcome: Outcome, level: str) -> None:
        sentry = self._sentry
        task = outcome.task or "unknown"
        with sentry.new_scope() as scope:
            scope.set_level(level)
            scope.set_tag("conveyor.task", task)
            scope.set_tag("conveyor.queue", outcome.queue)
            scope.set_tag("conveyor.status", outcome.status)
            scope.set_tag("conveyor.job_id", outcome.job_id)
            scope.set_context("conveyor job", self._context(message, outcome))
            scope.set_transaction_name(task)
            if not self.include_args:
                scope.add_event_processor(_without_locals)
            error = outcome.error
            if error is None:
                what = {"dead": "was dead-lettered", "failed": "failed"}.get(outcome.status)
                text = f"job {outcome.job_id} ({task}) {what or outcome.status}"
                sentry.capture_message(f"{text}: {outcome.reason}", level=level)
                return
            if not issubclass(type(error), TaskFailed):  # not isinstance: that reads __class__
                if readable(error):  # else Sentry would drop it, saying so only in its log
                    try:
                        sentry.capture_exception(error)  # with its stack
                        return
                    except BaseException as exc:  # its own code raised as Sentry read it
                        if issubclass(type(exc), INTERRUPTIONS):
                            raise
                error = described(error, outcome.job_id)
            # Known by its description only (raised in a child, or unreadable): grouped by
            # task and remote type, the traceback in the context.
            failed = cast(TaskFailed, error)
            scope.fingerprint = ["conveyor", task, failed.remote_type]
            context = self._context(message, outcome)
            if failed.remote_traceback:
                context["traceback"] = failed.remote_traceback
            scope.set_context("conveyor job", context)
            sentry.capture_exception(failed)

    def _context(self, message: Message | None, outcome: Outcome) -> dict[str, Any]:
        context: dict[str, Any] = {
            "id": outcome.job_id,
            "task": outcome.task,
            "queue": outcome.queue,
            "status": outcome.status,
            "reason": outcome.reason,
            "duration": outcome.duration,
        }
        if outcome.delay is not None:
            context["retry in"] = outcome.delay
        if message is not None:
            context["attempt"] = message.attempt
            context["retries"] = message.retries
            context["enqueued_at"] = message.enqueued_at
            if self.include_args:
                context["args"] = message.args
                context["kwargs"] = message.kwargs
        return context


def _without_locals(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """``event`` without the local variables of its stack frames (``include_args=False``):
    the task's frame holds its arguments, the worker's the message that carries them. The
    frames keep their function, file and line."""
    stacks = [event.get("stacktrace")]
    for part in ("exception", "threads"):
        values = (event.get(part) or {}).get("values") or ()
        stacks.extend(value.get("stacktrace") for value in values)
    for stack in stacks:
        for frame in (stack or {}).get("frames") or ():
            frame.pop("vars", None)
    return event
