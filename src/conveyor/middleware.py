"""Middleware: code of yours that Conveyor calls around a job's life.

Subclass ``Middleware``, override the hooks you need (the others cost nothing: only
overridden hooks are called), and register it with ``Conveyor(url, middleware=[...])`` or
``app.add_middleware(m)``. docs/observability.md has a worked example.

Where and when each hook runs:

- ``before_enqueue``, in the producer (the caller's thread): a job is built, before it is
  encoded; the place to add ``message.headers``.
- ``after_enqueue``, in the producer: the broker took the job (``error`` is None) or the
  enqueue failed.
- ``on_deduplicated``, in the producer, in place of ``after_enqueue``: nothing was written,
  because the broker already held a live job with the message's ``key``; ``job_id`` is
  that job's, the one the call returned. Unless overridden it calls
  ``after_enqueue(message, None)``.
- ``on_worker_start``, in the worker and in each child of ``--pool processes``: a worker
  session starts (``run`` or a drain), before its first job.
- ``on_worker_stop``, in the worker and in each child: the session ended, after its last job.
- ``before_run``, where the task runs (its thread, asyncio task or child process): just
  before the task's function, with ``current_job()`` set, in the context the task runs in.
- ``after_run``, where the task runs: just after it, with the value or error and duration.
- ``on_running``, in the worker: the job is handed to the pool.
- ``on_outcome``, in the worker: every attempt that ended (succeeded, failed, retried,
  cancelled, dead, released), before its outcome is written.
- ``on_retry``, ``on_failure``, ``on_dead_letter``, in the worker, after ``on_outcome``: a
  retry is planned; no retry is left; the job was dead-lettered.

With ``--pool processes`` the run hooks run in the child, and everything the worker decides
(``on_running`` to ``on_dead_letter``) in the worker itself, which sees every attempt end,
including one whose child was killed by a hard time limit or died.

Order: ``before_*`` and ``on_*`` hooks run in registration order, ``after_*`` hooks,
``on_deduplicated`` and ``on_worker_stop`` in the reverse order (like nested ``with``
blocks), and every ``after_*`` hook runs once for each ``before_*`` (``after_enqueue``, or
``on_deduplicated`` in its place), even when one of them raised.

Errors: an exception raised by a hook is logged on ``conveyor.middleware`` with the
middleware's name, and the job goes on as if the hook had returned: a middleware never
loses, fails or duplicates a job. In the worker that holds for anything a hook raises,
``SystemExit`` and ``KeyboardInterrupt`` too (a hook that reads a task's exception may get
either from its ``__str__``), except the worker's own interruptions of a run: a
``SoftTimeLimit`` or a cancel that lands in a run hook is the job's, raised once the other
middleware's hook has run. In the producer a ``KeyboardInterrupt`` passes through (a
Ctrl-C stops the program that was sending; ``after_enqueue`` gets it as the error).

Headers: ``message.headers`` is a small ``dict[str, str]`` carried with the job, for
producer middleware to pass context (a trace id, a tenant) to worker middleware. Write it
in ``before_enqueue``; read it anywhere on the worker side. At most ``MAX_HEADERS`` headers,
keys of 1 to ``MAX_HEADER_KEY`` characters, ``MAX_HEADERS_SIZE`` characters in all, names
and values exactly ``str`` (not a subclass) of valid Unicode (``check_headers``); headers a
middleware leaves that break these rules are logged and dropped, and the job goes out with
the headers it had before that middleware ran. A payload whose headers are not a map of
``str`` to ``str``, or hold more than ``MAX_HEADERS`` of them or a longer name, does not
decode: the worker dead-letters it as undecodable. A job without headers is encoded
exactly as before headers existed.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import msgspec

from ._errors import ValidationError
from ._message import MAX_HEADER_KEY, MAX_HEADERS, MAX_HEADERS_SIZE, Message
from ._values import _utf8, quoted

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADERS_SIZE",
    "MAX_HEADER_KEY",
    "Message",
    "Middleware",
    "Outcome",
    "Run",
    "Status",
    "WorkerProcess",
    "check_headers",
]

Status = Literal["succeeded", "failed", "retried", "cancelled", "dead", "released"]


class Run(msgspec.Struct, frozen=True):
    """How one run of a task ended, as ``after_run`` sees it where the task ran.

    ``value`` is what the task returned, ``error`` what it raised (None if it returned).
    When the worker stopped the run (a cancel, the end of a shutdown's grace period),
    ``error`` is a ``JobCancelled`` saying so. ``duration`` is in seconds.
    """

    value: Any = None
    error: BaseException | None = None
    duration: float = 0.0


class Outcome(msgspec.Struct, frozen=True):
    """How an attempt ended, as the worker decided it (``on_outcome`` and after).

    ``status``:

    * ``succeeded``, ``failed`` (no retry left, or not retried), ``retried`` (a retry runs
      in ``delay`` seconds), ``cancelled`` (stopped by ``job.cancel()``);
    * ``dead``: dead-lettered, ``reason`` says why (delivered too often, an undecodable
      payload, an unknown or untrusted task). It may never have run, and its message may
      be unreadable: then the hook's ``message`` is None and ``task`` is None here;
    * ``released``: the worker let go of it without an outcome (handed back when the worker
      stopped, or its process died), or the run ended after the worker had lost the job's
      lease (it stalled past it) and the job went on elsewhere; the job runs again, or ran.

    ``duration`` is the seconds from handing the job to the pool to the end of its run
    (None if it did not run). ``error`` is what failed it: the exception the task raised
    when it ran in this process, else a ``TaskFailed`` carrying the remote type, message
    and traceback (the task ran in a child process, or the child was killed at its time
    limit, or its result could not be stored).
    """

    job_id: str
    queue: str
    task: str | None
    status: Status
    duration: float | None = None
    error: BaseException | None = None
    reason: str | None = None
    delay: float | None = None


class WorkerProcess(msgspec.Struct, frozen=True):
    """The worker a lifecycle hook is called in. ``child`` is True in a child process of
    ``--pool processes`` (which runs the jobs the worker ``id`` hands it)."""

    id: str
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    child: bool = False
    pid: int = msgspec.field(default_factory=os.getpid)


class Middleware:
    """Hooks around a job's life; override the ones you need (see the module docstring).

    A hook must be quick: the run hooks are part of each run, and the worker's hooks run on
    the threads that hand out jobs and record outcomes. ``name`` is what log lines call
    the middleware (its class name unless set).
    """

    @property
    def name(self) -> str:
        return type(self).__qualname__

    # -- producer ----------------------------------------------------------------------------

    def before_enqueue(self, message: Message) -> None:
        """A job is about to be encoded and sent; add ``message.headers`` here."""

    def after_enqueue(self, message: Message, error: BaseException | None) -> None:
        """The broker took the job (``error`` is None), or sending it failed with ``error``
        (which the caller of ``delay``/``enqueue`` gets too)."""

    def on_deduplicated(self, message: Message, job_id: str) -> None:
        """Called instead of ``after_enqueue`` when the broker wrote nothing: it already
        held a live job with the message's ``key`` (``job_id``, the job the caller got, not
        ``message.id``). The default calls ``after_enqueue(message, None)``, so middleware
        that does not override it hears of the job as sent; override it to tell the two
        apart (a count of jobs sent, a span that names the job), and close there what
        ``before_enqueue`` opened. (Not told apart: a periodic tick skipped for its
        ``overlap``, and a ``job_id=`` that names a live job; docs/observability.md.)"""
        self.after_enqueue(message, None)

    # -- worker lifecycle --------------------------------------------------------------------

    def on_worker_start(self, worker: WorkerProcess) -> None:
        """A worker (or a child process of one) starts taking jobs."""

    def on_worker_stop(self, worker: WorkerProcess) -> None:
        """A worker (or a child process of one) stopped; its jobs have ended or been
        handed back."""

    # -- where the task runs ---------------------------------------------------------------

    def before_run(self, message: Message) -> None:
        """The task is about to run, in the thread, asyncio task or child process it runs
        in: a context variable set here is seen by the task and by ``after_run``."""

    def after_run(self, message: Message, run: Run) -> None:
        """The task returned or raised (``run``), in the same place as ``before_run``."""

    # -- the worker's decisions ------------------------------------------------------------

    def on_running(self, message: Message) -> None:
        """The worker handed the job to its pool; ``on_outcome`` follows once it ends."""

    def on_outcome(self, message: Message | None, outcome: Outcome) -> None:
        """An attempt ended; ``outcome.status`` says how. Called before the outcome is
        written, so whoever sees the job's result sees what this hook did."""

    def on_retry(self, message: Message, outcome: Outcome) -> None:
        """The attempt failed and the job runs again in ``outcome.delay`` seconds."""

    def on_failure(self, message: Message, outcome: Outcome) -> None:
        """The job failed for good: ``outcome.error`` and no retry left (or not retried)."""

    def on_dead_letter(self, message: Message | None, outcome: Outcome) -> None:
        """The job went to the dead-letter queue; ``outcome.reason`` says why. ``message``
        is None when the payload could not be decoded."""


def check_headers(headers: object) -> dict[str, str]:
    """Return ``headers`` if they are a valid ``message.headers``, else raise
    ``ValidationError`` saying what is wrong: a ``dict`` (exactly) of ``str`` names to
    ``str`` values, each exactly a ``str`` of valid Unicode as everything that travels as
    JSON (``_values``), within the bounds above. Types are checked before anything else is
    asked of a value, so a hostile subclass's methods never run."""
    if type(headers) is not dict:
        raise ValidationError(
            f"message headers must be a dict of str to str, not a {type(headers).__qualname__}"
        )
    if len(headers) > MAX_HEADERS:
        raise ValidationError(
            f"{len(headers)} message headers, over the limit of {MAX_HEADERS}: carry an id "
            "in a header and keep the data elsewhere"
        )
    size = 0
    for key, value in headers.items():
        if type(key) is not str or not 1 <= len(key) <= MAX_HEADER_KEY:
            shown = quoted(key[:40]) if type(key) is str else f"of type {type(key).__qualname__}"
            raise ValidationError(
                f"bad message header name {shown}: use a str of 1 to {MAX_HEADER_KEY} characters"
            )
        if type(value) is not str:
            raise ValidationError(
                f"message header {quoted(key)} has a {type(value).__qualname__} value; header "
                "values are str (str(x) for numbers, ids and subclasses of str)"
            )
        for text in (key, value):
            if not text.isascii() and not _utf8(text):
                raise ValidationError(
                    f"message header {quoted(key)} holds a lone surrogate (half of a UTF-16 "
                    "pair), which has no UTF-8 form; fix the text"
                )
        size += len(key) + len(value)
    if size > MAX_HEADERS_SIZE:
        raise ValidationError(
            f"message headers hold {size} characters, over the limit of {MAX_HEADERS_SIZE}: "
            "carry an id in a header and keep the data elsewhere"
        )
    return headers
