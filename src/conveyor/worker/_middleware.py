"""The worker's middleware calls, kept off the path of a worker that has none.

A worker whose app has no middleware uses the plain ``Consumer`` and runs each task's
function as it is: no check, no wrapper, not one extra call per job. With middleware it
uses ``HookedConsumer``, which calls the hooks at the points where the plain one decides
(see ``conveyor.middleware`` for what each hook means):

* ``_vet``: the task's function is wrapped (``wrap``), so ``before_run``/``after_run`` run
  in the thread, or inside the asyncio task, that runs it. With ``--pool processes`` the
  child wraps it instead (``_child.py``), and the worker process runs none of the run hooks.
* ``_launch``: ``on_running``.
* ``_record`` (every outcome passes there before the finisher writes it): ``on_outcome``
  and then ``on_retry``, ``on_failure`` or ``on_dead_letter``.
* ``release``, ``abandon``, ``_let_go`` and a buffered job dropped at its turn: a
  ``released`` outcome for a job that was running. So is a run that ends after its lease
  was lost (``attempt.lost``): the broker refuses its outcome and the job goes on
  elsewhere, so its late end is no retry, failure or success of the job's.

Each job that got ``on_running`` gets exactly one outcome: ``_held`` holds it until one
path claims it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import JobCancelled, SoftTimeLimit, TaskFailed
from .._hooks import Hooks
from .._message import JobStatus, Message
from ..brokers._port import Finish
from ..middleware import Outcome, Run, Status
from ._attempt import TIMEOUT, Attempt
from ._consumer import Consumer
from ._describe import Interrupted, name_of
from ._joblog import log_job

# What the worker raises into a run to stop it: it must reach the run, even inside a hook.
PASSTHROUGH: tuple[type[BaseException], ...] = (Interrupted, asyncio.CancelledError, SoftTimeLimit)

_STATUS: dict[JobStatus, Status] = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.DEAD: "dead",
    JobStatus.SCHEDULED: "retried",
}


def consumer_factory(hooks: Hooks | None, pool: str) -> Callable[..., Consumer]:
    """The consumer a worker uses: the plain one without middleware."""
    if hooks is None:
        return Consumer
    return functools.partial(HookedConsumer, hooks=hooks, wrap_runs=pool != "processes")


def wrap(
    hooks: Hooks,
    fn: Callable[..., Any],
    message: Message,
    attempt: Attempt | None = None,
    keep: bool = False,
) -> Callable[..., Any]:
    """``fn`` between ``before_run`` and ``after_run``, in the caller's context. ``keep``
    (in the worker process, for the outcome hooks) keeps the ``Run`` on ``attempt``, so
    they get the exception itself rather than its description; without run hooks that is
    all the wrapper does."""
    if not hooks.runs:
        return _keeping(fn, attempt) if keep and attempt is not None else fn

    def ended(run: Run) -> None:
        if keep and attempt is not None:
            attempt.run = run
        hooks.after_run(message, run, PASSTHROUGH)

    if inspect.iscoroutinefunction(fn):  # as the resolver and the child decide

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                hooks.before_run(message, PASSTHROUGH)
                value = await fn(*args, **kwargs)
            except BaseException as exc:
                ended(Run(error=_seen(exc, attempt), duration=time.perf_counter() - started))
                raise
            ended(Run(value=value, duration=time.perf_counter() - started))
            return value

        return run_async

    def run_sync(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            hooks.before_run(message, PASSTHROUGH)
            value = fn(*args, **kwargs)
        except BaseException as exc:
            ended(Run(error=_seen(exc, attempt), duration=time.perf_counter() - started))
            raise
        ended(Run(value=value, duration=time.perf_counter() - started))
        return value

    return run_sync


def _keeping(fn: Callable[..., Any], attempt: Attempt) -> Callable[..., Any]:
    """``fn``, keeping what it raises on ``attempt`` (no run hooks to call)."""
    if inspect.iscoroutinefunction(fn):

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except BaseException as exc:
                attempt.run = Run(error=_seen(exc, attempt))
                raise

        return run_async

    def run_sync(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            attempt.run = Run(error=_seen(exc, attempt))
            raise

    return run_sync


def _seen(exc: BaseException, attempt: Attempt | None) -> BaseException:
    """What the hooks are told ended the run: the worker's own stop signals are shown as
    what they mean, with the words the job's result has, not as the private exceptions
    (or, from the thread pool, the bare ``SoftTimeLimit`` class) that carry them."""
    why = attempt.stop if attempt is not None else None
    if why is None:
        return exc
    kind = type(exc)  # the real type: isinstance() would ask a task's exception its __class__
    bare = why == TIMEOUT and kind is SoftTimeLimit and not exc.args
    if not (bare or issubclass(kind, Interrupted | asyncio.CancelledError)):
        return exc
    if why == TIMEOUT:
        assert attempt is not None and attempt.message is not None
        return SoftTimeLimit(
            f"the job ran past its time limit of {attempt.message.timeout} s; it was interrupted"
        )
    return JobCancelled(f"the worker stopped the run ({why})")


class HookedConsumer(Consumer):
    """The consumer of a worker with middleware; pays only for the hooks that are used."""

    def __init__(self, *, hooks: Hooks, wrap_runs: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hooks = hooks
        self._wrap = wrap_runs and (hooks.runs or hooks.reports)
        self._reports = hooks.reports
        self._held: set[Attempt] = set()  # got on_running, no outcome yet
        self._held_lock = threading.Lock()

    def _vet(self, attempt: Attempt) -> None:
        super()._vet(attempt)
        if self._wrap and attempt.fn is not None and attempt.message is not None:
            attempt.fn = wrap(self.hooks, attempt.fn, attempt.message, attempt, self._reports)

    def _launch(self, attempt: Attempt, here: bool = False) -> None:
        if not attempt.lost and attempt.message is not None:
            if self._reports:
                with self._held_lock:
                    self._held.add(attempt)
            self.hooks.running(attempt.message)
        super()._launch(attempt, here)
        if self._reports and not attempt.began:  # dropped (lease lost while buffered)
            self._released(attempt)

    def _record(self, attempt: Attempt, finish: Finish) -> None:
        if self._reports:
            try:
                if attempt.lost:  # its outcome will be refused: the job went on elsewhere
                    self._released(attempt)
                elif (outcome := self._outcome(attempt, finish)) is not None and (
                    outcome.duration is None or self._claim(attempt)
                ):
                    self.hooks.outcome(attempt.message, outcome)
            except Exception:  # a bug here must not cost the job its outcome
                log_job(logging.ERROR, attempt, "job %s: cannot tell the middleware its outcome",
                        attempt.job_id, exc_info=True)  # fmt: skip
            attempt.run = None  # the exception and its frames are not kept past the hooks
        super()._record(attempt, finish)

    def release(self, attempts: Sequence[Attempt]) -> None:
        super().release(attempts)
        if self._reports:
            for attempt in attempts:
                self._released(attempt)

    def abandon(self, attempt: Attempt) -> None:
        super().abandon(attempt)
        if self._reports:
            self._released(attempt)

    def _let_go(self, attempt: Attempt, what: str = "start it") -> None:
        super()._let_go(attempt, what)
        if self._reports:
            self._released(attempt)

    # -- helpers -----------------------------------------------------------------------------

    def _claim(self, attempt: Attempt) -> bool:
        """True once for a job that got ``on_running``: its outcome is reported now."""
        with self._held_lock:
            if attempt in self._held:
                self._held.remove(attempt)
                return True
            return False

    def _released(self, attempt: Attempt) -> None:
        if self._claim(attempt):
            d = attempt.delivery
            ran = time.monotonic() - attempt.began if attempt.began else None
            task = attempt.message.task if attempt.message is not None else None
            outcome = Outcome(d.id, d.queue, task, "released", duration=ran)
            self.hooks.outcome(attempt.message, outcome)

    def _outcome(self, attempt: Attempt, finish: Finish) -> Outcome | None:
        status = _STATUS.get(finish.status)
        ran = time.monotonic() - attempt.began if attempt.began else None
        if status is None or (status == "retried" and ran is None):
            return None  # a rate-limited job put back for later: no attempt was made
        d, message = attempt.delivery, attempt.message
        delay = None
        if status == "retried" and finish.retry is not None and finish.retry.eta is not None:
            delay = max(finish.retry.eta - self.clock.time(), 0.0)
        error = self._error(attempt, finish) if status in ("failed", "retried") else None
        task = message.task if message is not None else None
        reason = finish.reason or None
        return Outcome(d.id, d.queue, task, status, ran, error, reason, delay)

    def _error(self, attempt: Attempt, finish: Finish) -> BaseException:
        """The exception itself when the task raised it in this process, else a
        ``TaskFailed`` describing what failed the job."""
        run, described = attempt.run, attempt.error
        if (
            run is not None
            and run.error is not None
            and (described is None or described.type == name_of(type(run.error)))
        ):
            return run.error
        if described is None and finish.result is not None:
            described = self.codec.decode_outcome(finish.result).error
        if described is None:
            return TaskFailed("conveyor.TaskFailed", finish.reason or "", job_id=attempt.job_id)
        return TaskFailed(described.type, described.message, described.traceback, attempt.job_id)
