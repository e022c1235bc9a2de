"""Calling the app's middleware: only the hooks each one overrides, each call guarded.

``Hooks`` is built once from a list of ``Middleware`` (when the list changes, not per job):
for every hook it keeps the bound methods of the middleware that override it, so a hook
nobody overrides costs nothing. Every call is guarded: what a hook raises is logged with
the middleware's name and the job goes on, ``SystemExit`` and ``KeyboardInterrupt``
included (a hook that read a task's hostile exception may raise either). What passes
through is named per hook (``passthrough``): a ``KeyboardInterrupt`` in the producer's
hooks (a Ctrl-C stops the program that was sending), and in the run hooks the worker's own
interruptions of a run. It is raised once every other middleware's hook has run, so each
``after_*`` still runs once for each ``before_*``.

``Sending`` is one enqueue call seen by the producer hooks: ``before_enqueue`` for each job
as it is built, ``after_enqueue`` for each of them when the call ends, with its error if
it failed (or, for jobs built in ``Sending.alone()`` that failed there, with that error then),
or ``on_deduplicated`` for a job the broker did not write (``Sending.sent``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError, ValidationError
from ._message import Envelope, Message
from .middleware import Middleware, Outcome, Run, WorkerProcess, check_headers

if TYPE_CHECKING:
    from ._app import Conveyor
    from ._task import Signature

log = logging.getLogger("conveyor.middleware")

Bound = tuple[tuple[Middleware, Callable[..., None]], ...]


def check_middleware(middleware: object) -> Middleware:
    if isinstance(middleware, type) and issubclass(middleware, Middleware):
        name = middleware.__name__
        raise ConfigurationError(
            f"{name} is a Middleware class: pass an instance, {name}(), not the class"
        )
    if not isinstance(middleware, Middleware):
        raise ConfigurationError(
            f"{middleware!r} is not a conveyor.Middleware: subclass it and override the hooks "
            "you need, then pass an instance (docs/observability.md)"
        )
    return middleware


def check_middleware_list(given: object) -> list[Any]:
    """``middleware=``: a list (any iterable but a string), of instances that
    ``add_middleware`` checks one by one. A middleware on its own, its name or its class
    would otherwise be iterated, or fail to be."""
    if isinstance(given, Middleware | str | bytes) or not isinstance(given, Iterable):
        raise ConfigurationError(
            f"middleware= takes a list of instances, as middleware=[{_example(given)}], "
            f"not {given!r}"
        )
    return list(given)


def _example(given: object) -> str:
    """The call that makes the middleware ``given`` seems to mean."""
    if isinstance(given, Middleware):
        name = type(given).__name__
    elif isinstance(given, type) and issubclass(given, Middleware):
        name = given.__name__
    elif isinstance(given, str) and given.rpartition(".")[2].isidentifier():
        name = given.rpartition(".")[2]  # "pkg.M": import M, then make one
    else:
        name = "MyMiddleware"
    return f"{name}()"


def _overrides(middleware: Middleware, name: str) -> bool:
    return getattr(type(middleware), name) is not getattr(Middleware, name)


def _bind(
    middleware: Sequence[Middleware], name: str, reverse: bool = False, also: str = ""
) -> Bound:
    """The bound ``name`` of each middleware that overrides it (or ``also``, which its
    default calls)."""
    found = tuple(
        (m, getattr(m, name))
        for m in middleware
        if _overrides(m, name) or (also and _overrides(m, also))
    )
    return found[::-1] if reverse else found


# What the producer's hooks let through: a Ctrl-C stops the program that was sending.
PRODUCER: tuple[type[BaseException], ...] = (KeyboardInterrupt,)


def _name(middleware: Middleware) -> str:
    try:
        name = middleware.name
    except Exception:
        name = None
    return name if type(name) is str else type(middleware).__qualname__


def failed(
    middleware: Middleware,
    hook: str,
    args: tuple[Any, ...],
    passthrough: tuple[type[BaseException], ...] = (),
) -> None:
    """Log what a hook raised (called from its ``except``), with the job it was about.
    Never raises, but ``passthrough``: when the traceback cannot be shown (the exception,
    or the task's exception it was raised while handling, is hostile to printing), the line
    goes without it."""
    name = _name(middleware)
    about = next((f" for job {a.id}" for a in args if type(a) is Message), "")
    try:
        log.error("middleware %s: %s raised%s; carrying on without it", name, hook, about,
                  exc_info=True)  # fmt: skip
    except BaseException as exc:
        if issubclass(type(exc), passthrough):
            raise
        log.error("middleware %s: %s raised%s (its traceback cannot be shown); carrying on "
                  "without it", name, hook, about)  # fmt: skip


def call(
    bound: Bound, hook: str, *args: Any, passthrough: tuple[type[BaseException], ...] = ()
) -> None:
    """Each middleware's ``hook``, all of them: what one raises is logged, except an
    exception of ``passthrough``, raised (the first one) once the others have run."""
    through: BaseException | None = None
    for middleware, method in bound:
        try:
            method(*args)
        except BaseException as exc:
            # issubclass of the real type: isinstance() reads __class__, which may raise
            if issubclass(type(exc), passthrough):
                if through is None:
                    through = exc
            else:
                failed(middleware, hook, args, passthrough)
    if through is not None:
        raise through


class Hooks:
    """The hooks of a list of middleware, ready to call."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = tuple(middleware)
        ms = self.middleware
        self.before_enqueue_hooks = _bind(ms, "before_enqueue")
        self.after_enqueue_hooks = _bind(ms, "after_enqueue", reverse=True)
        # Its place: the default calls after_enqueue, so those that override either hear.
        self.deduplicated_hooks = _bind(ms, "on_deduplicated", reverse=True, also="after_enqueue")
        self.worker_start_hooks = _bind(ms, "on_worker_start")
        self.worker_stop_hooks = _bind(ms, "on_worker_stop", reverse=True)
        self.before_run_hooks = _bind(ms, "before_run")
        self.after_run_hooks = _bind(ms, "after_run", reverse=True)
        self.running_hooks = _bind(ms, "on_running")
        self.outcome_hooks = _bind(ms, "on_outcome")
        self.retry_hooks = _bind(ms, "on_retry")
        self.failure_hooks = _bind(ms, "on_failure")
        self.dead_letter_hooks = _bind(ms, "on_dead_letter")
        self.runs = bool(self.before_run_hooks or self.after_run_hooks)
        self.reports = bool(
            self.outcome_hooks or self.retry_hooks or self.failure_hooks or self.dead_letter_hooks
        )

    # -- producer ----------------------------------------------------------------------------

    def before_enqueue(self, message: Message) -> None:
        """Each middleware's ``before_enqueue``; headers it leaves invalid (or sets before
        raising) are dropped, so the job goes out as if it had not run."""
        for middleware, method in self.before_enqueue_hooks:
            kept = dict(message.headers)
            try:
                method(message)
                check_headers(message.headers)
            except ValidationError as exc:
                log.error("middleware %s: before_enqueue left bad headers on job %s (%s); "
                          "they are dropped", _name(middleware), message.id, exc)  # fmt: skip
                message.headers = kept
            except BaseException as exc:
                message.headers = kept
                if issubclass(type(exc), PRODUCER):
                    raise  # the send is abandoned; after_enqueue gets the interrupt
                failed(middleware, "before_enqueue", (message,), PRODUCER)

    def after_enqueue(self, message: Message, error: BaseException | None) -> None:
        call(self.after_enqueue_hooks, "after_enqueue", message, error, passthrough=PRODUCER)

    def deduplicated(self, message: Message, job_id: str) -> None:
        call(self.deduplicated_hooks, "on_deduplicated", message, job_id, passthrough=PRODUCER)

    # -- worker ------------------------------------------------------------------------------

    def worker_start(self, worker: WorkerProcess) -> None:
        call(self.worker_start_hooks, "on_worker_start", worker)

    def worker_stop(self, worker: WorkerProcess) -> None:
        call(self.worker_stop_hooks, "on_worker_stop", worker)

    def before_run(self, message: Message, passthrough: tuple[type[BaseException], ...]) -> None:
        call(self.before_run_hooks, "before_run", message, passthrough=passthrough)

    def after_run(
        self, message: Message, run: Run, passthrough: tuple[type[BaseException], ...]
    ) -> None:
        call(self.after_run_hooks, "after_run", message, run, passthrough=passthrough)

    def running(self, message: Message) -> None:
        call(self.running_hooks, "on_running", message)

    def outcome(self, message: Message | None, outcome: Outcome) -> None:
        call(self.outcome_hooks, "on_outcome", message, outcome)
        status = outcome.status
        if status == "retried":
            call(self.retry_hooks, "on_retry", message, outcome)
        elif status == "failed":
            call(self.failure_hooks, "on_failure", message, outcome)
        elif status == "dead":
            call(self.dead_letter_hooks, "on_dead_letter", message, outcome)


class Sending:
    """One enqueue call: ``with app._sending() as sending: sending.envelope(sig)...``.

    Without middleware ``envelope`` is ``app.envelope``; with it, each job's message goes
    through ``before_enqueue`` before it is encoded, and leaving the block calls
    ``after_enqueue`` for every one of them, with the exception the block raised (if any),
    or ``on_deduplicated`` for those ``sent`` found not written.
    """

    def __init__(self, app: Conveyor, hooks: Hooks | None) -> None:
        self._app = app
        self._hooks = hooks
        self._messages: list[Message] = []
        self._deduplicated: dict[str, str] = {}  # message id -> the live job returned instead

    def sent(self, envelopes: Sequence[Envelope], ids: Sequence[str]) -> None:
        """The ids the broker returned for ``envelopes``: where one is not its envelope's,
        the broker already held a live job with that key and wrote nothing. Comparing the
        lists is all a batch whose jobs were all written pays."""
        if self._hooks is None:
            return
        given = [e.id for e in envelopes]
        if ids != given:
            self._deduplicated.update((g, i) for g, i in zip(given, ids, strict=False) if g != i)

    def envelope(self, sig: Signature[Any]) -> Envelope:
        if self._hooks is None:
            return self._app.envelope(sig)
        message, eta = self._app._message(sig)
        self._messages.append(message)  # from here on, after_enqueue is called for it
        self._hooks.before_enqueue(message)
        return self._app._seal(message, eta)

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Jobs that may fail apart from the call (the scheduler's, one schedule's): if the
        block raises, ``after_enqueue`` hears at once, with that error, of the messages made
        in it, and they leave the call (it goes on without them)."""
        start = len(self._messages)
        try:
            yield
        except BaseException as exc:
            dropped = self._messages[start:]
            del self._messages[start:]
            if self._hooks is not None:
                _after_each(self._hooks, dropped, exc)
            raise

    def __enter__(self) -> Sending:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._hooks is not None:
            _after_each(self._hooks, self._messages, ev, self._deduplicated if ev is None else {})


def _after_each(
    hooks: Hooks,
    messages: Sequence[Message],
    error: BaseException | None,
    deduplicated: dict[str, str] | None = None,
) -> None:
    """``after_enqueue`` for every message (``on_deduplicated`` for one the broker did not
    write), also after one let an exception through (a ``KeyboardInterrupt``): raised once
    the last has had its call. (The rest heard nothing, and a tracing middleware's send
    spans stayed open for ever.)"""
    through: BaseException | None = None
    for message in messages:
        try:
            job_id = deduplicated.get(message.id) if deduplicated else None
            if job_id is None:
                hooks.after_enqueue(message, error)
            else:
                hooks.deduplicated(message, job_id)
        except BaseException as exc:
            if through is None:
                through = exc
    if through is not None:
        raise through
