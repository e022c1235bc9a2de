"""What every broker adapter shares, written once: constants, checks, errors, time.

A broker is one object (``Broker``, in ``_port``) built in two halves by use: the hot path
the worker and the app drive (``_port``) and the operations the CLI and the dashboard read
and do (``_admin``). Each public method is written once, in those modules, in the way of a
template method: it checks its arguments (the rules below), runs the adapter's primitive
step (``_enqueue``, ``_stats``, ...) inside the adapter's error boundary (``_errors``), and
turns the primitive's plain answer into the port's (None into ``JobNotFound``, a blocking
loop around a ``Watch``). An adapter implements the primitives only; docs/adding-a-broker.md
lists them.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

from .._clock import Clock, SystemClock
from .._errors import ConfigurationError, DependencyNotFound, JobNotFound
from .._message import (
    Envelope,
    JobStatus,
    validate_job_id,
    validate_priority,
    validate_queue,
)

PARKED = math.inf  # the eta of a job that waits for ``promote``
# How many events a broker keeps by default (docs/observability.md says why this many), and
# fewer than how many more an adapter that stores several events to a record may keep.
EVENTS_KEPT = 10_000
EVENTS_SLACK = 100
# The ended statuses ``requeue`` puts back (a succeeded job keeps its result, not its work).
REQUEUEABLE = frozenset({JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED})
# The reason of a job cancelled by the broker, not by its worker's finish (``Job.cancel``),
# and how long its record is kept (a day, like a default result).
CANCELLED_PENDING = "cancelled before it ran"
CANCELLED_WORKER_STOPPED = "cancelled while running (its worker stopped)"
CANCELLED_TTL = 86400.0
# A blocked fetch on an injected clock looks again this often while something may come
# due: the fake clock's jumps do not map to real time.
INJECTED_CLOCK_RECHECK = 0.05

T_co = TypeVar("T_co", covariant=True)


# -- the rules every public method checks ------------------------------------------------------


def check_envelopes(envelopes: Sequence[Envelope]) -> None:
    """Every envelope of a batch is an ``Envelope`` with a good id, queue, priority and
    dependency ids, checked before anything is written."""
    for env in envelopes:
        if not isinstance(env, Envelope):
            raise TypeError(f"enqueue takes Envelope objects, got {env!r}")
        validate_job_id(env.id)
        validate_queue(env.queue)
        validate_priority(env.priority)
        for dep in env.depends_on:
            validate_job_id(dep)


def check_events(envelopes: Sequence[Envelope], events: Sequence[bytes]) -> None:
    """``enqueue``'s events come one per envelope, or not at all."""
    if events and len(events) != len(envelopes):
        raise ValueError(
            f"enqueue takes one event per envelope or none: {len(events)} events "
            f"for {len(envelopes)} envelopes"
        )


def check_queues(queues: Sequence[str]) -> list[str]:
    """The queues of a fetch, each named once, in order, each a good name."""
    return [validate_queue(q) for q in dict.fromkeys(queues)]


def check_ids(job_ids: Sequence[str]) -> list[str]:
    """The job ids of ``requeue`` or ``delete``, each a good id (a bare string is refused:
    it would be taken for its characters)."""
    if isinstance(job_ids, str | bytes):
        raise TypeError(f"pass a list of job ids, not the single string {job_ids!r}")
    return [validate_job_id(i) for i in job_ids]


def check_status(status: JobStatus | str) -> JobStatus:
    """A ``JobStatus`` (or its value)."""
    try:
        return JobStatus(status)
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise ConfigurationError(f"bad status {status!r}: use one of {names}") from None


PAGE_MAX = 2**63 - 1  # a limit or offset past it is past what a database's integer holds


def check_page(limit: int, offset: int) -> None:
    """``entries`` takes at least one job per page, after skipping none or more."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= PAGE_MAX:
        raise ConfigurationError(f"bad limit {limit!r}: list from 1 to {PAGE_MAX} jobs per page")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= PAGE_MAX:
        raise ConfigurationError(f"bad offset {offset!r}: skip from 0 to {PAGE_MAX} jobs")


def check_kept(kept: int) -> int:
    """``events_kept``: at least one event."""
    if not isinstance(kept, int) or isinstance(kept, bool) or kept < 1:
        raise ConfigurationError(f"bad events_kept {kept!r}: keep at least 1 event")
    return kept


def check_lease(lease: float, block: float | None = None) -> None:
    """A lease is a positive, finite number of seconds; a fetch blocks zero or more (without
    end: ``math.inf``). A NaN block waited for ever on an empty queue; a negative lease
    handed out a job already expired, to be handed out again at once."""
    if not 0 < lease < math.inf:
        raise ConfigurationError(
            f"bad lease {lease!r}: a lease is a positive, finite number of seconds"
        )
    if block is not None and not block >= 0:
        raise ConfigurationError(f"bad block {block!r}: wait zero or more seconds")


def check_read(block: float, limit: int) -> None:
    """``read_events`` takes at least one event and a block of zero or more seconds."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ConfigurationError(f"bad limit {limit!r}: read at least 1 event at a time")
    if not block >= 0:
        raise ConfigurationError(f"bad block {block!r}: wait zero or more seconds")


def event_number(after: str | None) -> int:
    """The event a cursor names (events are numbered from 1, in publish order); 0, before
    the first, for None."""
    if after is None:
        return 0
    if not isinstance(after, str) or not after.isdigit():
        raise ConfigurationError(f"bad event cursor {after!r}: pass one read_events returned")
    return int(after)


# -- the errors every adapter raises ------------------------------------------------------------


def job_not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no job with id {job_id!r} (unknown, purged or expired)")


def purged_while_waiting(job_id: str) -> JobNotFound:
    return JobNotFound(f"job {job_id!r} was purged or deleted while waiting for it")


def unknown_dependency(job_id: str, dependency: str) -> DependencyNotFound:
    """The error every adapter raises for a ``depends_on`` id it does not know.

    Not "already done": a record that expired after its result TTL and a typo look the same,
    and running a job whose prerequisite may have failed is the worse surprise."""
    return DependencyNotFound(
        f"job {job_id} depends on {dependency!r}, which is not a known job (never enqueued, "
        "or its record expired after its result TTL); nothing was enqueued. Enqueue the "
        "dependency first, or keep its result longer (result_ttl=)"
    )


@dataclass(frozen=True)
class BrokerOptions:
    """What ``open_broker`` passes every adapter beside the URL (``Broker.from_url``):
    ``clock``, the injected clock; ``prefix``, the key prefix of a shared server's keys (Redis;
    None: the URL's ``?prefix=``, else ``conveyor``);
    ``create``, False for tools that only look (make nothing: no file, no folder, no schema);
    ``events_kept``, the event log's size; ``store``, the URL of the record store of a
    broker that keeps its records in another (``amqp://``), else None."""

    clock: Clock
    prefix: str | None = None
    create: bool = True
    events_kept: int = EVENTS_KEPT
    store: str | None = None


# -- blocking without polling -------------------------------------------------------------------


class Watch(Protocol[T_co]):
    """How an adapter blocks (``fetch``, ``wait``, ``read_events``): the base loops, the watch
    looks and sleeps. A watch is a context manager; whatever it must set up so that a change
    made after a look wakes the sleep after it (a condition held, a socket bound, a channel
    listened to) is set up by the time ``sleep_then_look`` first sleeps, and a look made
    after setting it up comes before that sleep: no change slips between a look and a sleep.
    An adapter's watch subclasses it for the context manager's defaults (nothing to set
    up or tear down).
    """

    def look(self) -> T_co:
        """What there is now."""
        ...

    def sleep_then_look(self, seconds: float) -> T_co:
        """Sleep until woken (or ``seconds`` pass; any shorter sleep is fine, the base calls
        again), then look. ``seconds`` may be ``math.inf``."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class AsyncWatch(Protocol[T_co]):
    """``Watch`` for an adapter's own asyncio path (``wait_async``): the same, awaited."""

    async def look(self) -> T_co: ...

    async def sleep_then_look(self, seconds: float) -> T_co: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class ErrorBoundary(Protocol):
    """An adapter's one translation of its library's errors into ``BrokerError``: a context
    manager (``with`` and ``async with``) every primitive runs inside."""

    def __enter__(self) -> object: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None: ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None: ...


class BrokerBase(ABC):  # noqa: B024 - its abstract primitives are in _port and _admin
    """State and rules both halves of a broker share: its URL, its clock, its event log's
    size, its error boundary and how long a blocked fetch sleeps."""

    url: str = ""
    # The adapter's translation of its library's errors, around every primitive it runs.
    _errors: ClassVar[ErrorBoundary] = contextlib.nullcontext()

    def __init__(
        self, url: str, *, clock: Clock | None = None, events_kept: int = EVENTS_KEPT
    ) -> None:
        self.url = url
        self._clock: Clock = clock or SystemClock()
        self._events_kept = check_kept(events_kept)

    @classmethod
    def from_url(cls, url: str, options: BrokerOptions) -> Self:
        """The broker a URL of one of the adapter's schemes names (the registry checked the
        URL with the adapter's ``check`` first)."""
        raise NotImplementedError(f"{cls.__name__} cannot be opened from a URL")

    @property
    def events_kept(self) -> int:
        """How many events the log keeps at least (see the contract); settable."""
        return self._events_kept

    @events_kept.setter
    def events_kept(self, kept: int) -> None:
        self._events_kept = check_kept(kept)
        self._events_kept_changed()

    def _events_kept_changed(self) -> None:  # noqa: B027 - an optional primitive
        """``events_kept`` was set: an adapter whose log has a size of its own resizes it."""

    @property
    def _real_time(self) -> bool:
        """On the real clock, due times are real times to sleep until; an injected clock's
        are not."""
        return isinstance(self._clock, SystemClock)

    def _idle_pause(self, left: float, due_in: float | None) -> float:
        """How long a blocked fetch sleeps: up to ``left`` seconds, and, while a scheduled job
        or a lease comes due in ``due_in`` seconds, until then (on an injected clock, a short
        look again instead)."""
        if due_in is None:
            return left
        pause = min(left, max(due_in, 0.001))
        return pause if self._real_time else min(pause, INJECTED_CLOCK_RECHECK)

    def close(self) -> None:
        """Release connections and files."""
        with self._errors:
            self._close()

    def _close(self) -> None:  # noqa: B027 - an optional primitive
        """Release connections and files (nothing by default)."""

    async def aclose(self) -> None:
        """``close`` from async code (``async with app``): connections that belong to the
        running event loop are closed on it, awaited, before the rest."""
        with self._errors:
            await self._aclose()
        self.close()

    async def _aclose(self) -> None:  # noqa: B027 - an optional primitive
        """Close what belongs to the running event loop (nothing by default)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
