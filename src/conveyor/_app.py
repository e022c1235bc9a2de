"""``Conveyor``: the composition root. It owns the registry, the codec and the broker; there
are no module-level globals, so two apps in one process never see each other's tasks."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, overload

from . import _events, ratelimit
from ._checks import flag, packages
from ._clock import Clock, SystemClock
from ._codec import DEFAULT_MAX_PAYLOAD, Codec, Serializer
from ._delete import delete
from ._errors import (
    BrokerError,
    ConfigurationError,
    ConveyorError,
    InvalidOption,
    JobNotFound,
    ValidationError,
)
from ._events import Event
from ._hooks import Hooks, Sending, check_middleware, check_middleware_list
from ._job import Job
from ._message import Envelope, JobStatus, Message, validate_job_id, validate_queue
from ._requeue import requeue, requeue_all
from ._task import Options, Signature, Task, callable_name
from .brokers import DEFAULT_URL, Broker, load_adapter, open_broker, record_store, redact_url
from .brokers._port import CANCELLED_PENDING, check_kept

if TYPE_CHECKING:
    from .cache import Cached
    from .locks import Lock
    from .middleware import Middleware
    from .scheduler import Schedule
    from .stores import Store
    from .stores._port import KeyValue

log = logging.getLogger("conveyor")

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MAX_RESULT = 1024 * 1024  # bytes of an encoded result, like DEFAULT_MAX_PAYLOAD


class _Sender:
    """``app.options(...)``: the RQ-style ``enqueue`` with options bound. They change the
    app's defaults for a plain callable, and a task's own options for a task."""

    def __init__(self, app: Conveyor, changes: dict[str, Any]) -> None:
        self._app = app
        self._changes = changes
        self._opts = app.defaults.merge(**changes)  # checked now, not at the enqueue

    def _options(self, fn: Callable[..., Any]) -> Options:
        return fn.opts.merge(**self._changes) if isinstance(fn, Task) else self._opts

    def enqueue(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        sig = self._app._signature(fn, args, kwargs, self._options(fn))
        return self._app._send([sig])[0]

    async def enqueue_async(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]:
        sig = self._app._signature(fn, args, kwargs, self._options(fn))
        return (await self._app._send_async([sig]))[0]


class Conveyor:
    """A task queue application.

    ``url`` picks the broker: the argument, else ``CONVEYOR_URL``, else
    ``sqlite:///./conveyor.db``. ``prefix`` is the key prefix on Redis: else the URL's
    ``?prefix=``, else ``conveyor`` (both given must be the same name, or opening the broker
    raises ``ConfigurationError``). ``trust`` names extra top-level packages whose callables
    a worker may run by name (see ``app.enqueue``). ``max_payload`` caps an encoded job and
    ``max_result`` a task's encoded result, in bytes (1 MiB each by default); a result over
    its cap fails the job with ``ResultTooLarge`` (docs/reliability.md). ``events``: publish
    what happens to jobs and workers into the broker's event log (``conveyor events``,
    ``read_events``); with False this app writes no event at all. ``events_kept``: how many
    events the log keeps (default 10,000; docs/observability.md); give every process of a
    deployment the same. ``middleware`` are hooks called around each job's life
    (``conveyor.Middleware``; more with ``add_middleware``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        trust: Sequence[str] = (),
        serializer: Serializer = "json",
        secret: bytes | str | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_result: int = DEFAULT_MAX_RESULT,
        prefix: str | None = None,
        clock: Clock | None = None,
        broker: Broker | None = None,
        events: bool = True,
        events_kept: int | None = None,
        middleware: Sequence[Middleware] = (),
        store: str | None = None,
    ) -> None:
        self.url = url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL
        """The broker's URL (``repr(app)`` shows it with the password masked)."""
        self.store_url = store
        """The record store's URL, for a broker that keeps its records in another (RabbitMQ):
        ``store=``, else ``CONVEYOR_STORE_URL``; None for the others."""
        self.events = flag("events", events)
        self.events_kept = None if events_kept is None else check_kept(events_kept)
        self.trust = packages("trust", trust, "trust=['myapp', 'shared']")
        self.prefix = prefix
        """The ``prefix`` argument (None: not given; the broker's ``prefix`` is the one used)."""
        self.clock: Clock = clock or SystemClock()
        """What every delay, lease, TTL and schedule reads time from (``FakeClock`` in tests)."""
        self.codec = Codec(serializer, secret, max_payload)
        if isinstance(max_result, bool) or not isinstance(max_result, int) or max_result < 1:
            raise ConfigurationError(
                f"max_result is a size in bytes, a positive whole number, not {max_result!r}"
            )
        self.max_result = max_result  # checked by the worker, on the result it encodes
        self.registry: dict[str, Task[Any, Any]] = {}
        """The registered tasks by name."""
        self.defaults = Options()
        self.schedules: list[Schedule] = []
        """The periodic schedules ``@app.periodic`` added; every worker runs them."""
        self._broker = broker
        self._pinned: Broker | None = None  # use_memory's broker: close() leaves it in place
        if broker is not None and self.events_kept is not None:
            broker.events_kept = self.events_kept
        self._broker_lock = threading.Lock()
        self.middleware: tuple[Middleware, ...] = ()
        """The middleware, in registration order."""
        self._hooks: Hooks | None = None  # None: no middleware, and no cost on any path
        for m in check_middleware_list(middleware):
            self.add_middleware(m)
        if broker is None:
            # Parse now so a bad URL fails where the app is made, not at the first job; and
            # import its adapter (opening nothing) so the first job does not pay for that.
            load_adapter(self.url)
            self.pick_store()

    def __repr__(self) -> str:
        return f"<Conveyor {redact_url(self.url)}>"

    def pick_store(self) -> None:
        """Settle ``store_url`` for the broker ``url`` names (after ``url`` changed):
        ``ConfigurationError`` if it needs a record store and none is given, or was given
        one it does not take."""
        self.store_url = record_store(
            self.url, self.store_url, os.environ.get("CONVEYOR_STORE_URL")
        )

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware after the ones already registered (its ``before_*`` hooks run
        after theirs, its ``after_*`` hooks before). A worker uses the middleware the app
        had when the worker was made."""
        self.middleware = (*self.middleware, check_middleware(middleware))
        self._hooks = Hooks(self.middleware)

    # -- resources -------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker, opened on first use (importing a tasks module opens nothing)."""
        return self._broker if self._broker is not None else self.open()

    def open(self, *, create: bool = True) -> Broker:
        """Open the broker now, rather than on first use, and return it (``app.broker``).

        ``create=False`` is for tools that only look (``conveyor info``): an SQLite file
        that does not exist raises ``ConfigurationError`` naming the path, instead of an
        empty database (and its folder) being made there. A broker already open is kept."""
        if self._broker is None:
            with self._broker_lock:
                if self._pinned is not None:
                    self._broker = self._pinned
                elif self._broker is None:
                    self._broker = open_broker(
                        self.url,
                        clock=self.clock,
                        prefix=self.prefix,
                        create=create,
                        events_kept=self.events_kept,
                        store=self.store_url,
                    )
        return self._broker

    def _serving(self) -> None:
        """A worker command (``conveyor worker``) is about to serve this app: called before
        its ``--url`` is applied and its broker opened (``FlaskConveyor`` loads its Flask
        app here)."""

    def close(self) -> None:
        """Close the broker if it is open (the next use opens it again). Inside
        ``use_memory`` it does nothing: the memory broker stays until the block ends, and the
        app's own broker is not opened by the next use."""
        broker = self._broker
        if broker is not None and broker is not self._pinned:
            broker.close()
            self._broker = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """``close()`` from a coroutine: the running loop's own connections are closed on it,
        awaited (a ``close()`` as ``asyncio.run``'s last step left them to a task the run
        then cancelled). What ``async with app`` does on the way out."""
        broker = self._broker
        if broker is not None and broker is not self._pinned:
            await broker.aclose()
            self._broker = None

    async def _abroker(self) -> Broker:
        """The broker, for a coroutine: opened in a thread the first time (a PostgreSQL or
        RabbitMQ broker connects as it opens, which froze the loop for as long as the
        server took to answer: 10 s and 30 s for one that never does)."""
        broker = self._broker
        if broker is not None:
            return broker
        import asyncio  # loaded already: this runs on its loop (import conveyor stays lean)

        return await asyncio.to_thread(self.open)

    # -- primitives next to the queue (every broker) ---------------------------------------

    def lock(
        self,
        name: str,
        ttl: float,
        *,
        timeout: float | None = None,
        auto_renew: bool = False,
    ) -> Lock:
        """A distributed lock: ``with app.lock("invoice:42", ttl=30, timeout=5) as lk:``.

        ``ttl`` is mandatory; ``timeout`` is how long acquiring may wait (None: forever,
        0: try once). ``lk.fence`` is a fencing token that grows with every grant."""
        from .locks import Lock

        return Lock(self.broker.kv, name, ttl, timeout=timeout, auto_renew=auto_renew)

    def cached(
        self, ttl: float, *, key: Callable[..., str] | None = None, name: str | None = None
    ) -> Callable[[F], Cached[F]]:
        """Cache a function's results for ``ttl`` seconds; one computation per key at a time."""
        from .cache import cached

        return cached(self._kv, self.codec, ttl, key=key, name=name)  # opened at first call

    def _kv(self) -> KeyValue:
        """The store of the broker the app has now (``use_memory`` swaps it)."""
        return self.broker.kv

    @property
    def store(self) -> Store:
        """A small key-value store on the broker: get, set with TTL, delete, incr, update."""
        from .stores import Store

        return Store(self.broker.kv, self.codec)

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | dt.timedelta | None = None,
        name: str | None = None,
        overlap: str = "skip",
        catch_up: int = 1,
        tz: str = "UTC",
        **options: Any,
    ) -> Callable[[Callable[[], R]], Task[[], R]]:
        """Run a task on a schedule: ``@app.periodic(cron="*/5 * * * *")`` or
        ``every=timedelta(minutes=5)``. Workers run the schedule; each tick runs once however
        many workers there are. ``tz`` (an IANA name, e.g. ``"Europe/Paris"``) is the zone
        whose wall clock ``cron`` is read on, across daylight saving changes (docs/scheduling.md).
        ``overlap="skip"`` skips a tick while the previous run is still pending; ``catch_up``
        bounds how many missed ticks run after downtime."""
        from .scheduler import periodic

        return periodic(
            self,
            cron=cron,
            every=every,
            name=name,
            overlap=overlap,
            catch_up=catch_up,
            tz=tz,
            **options,
        )

    # -- defining tasks --------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = ...,
        priority: int = ...,
        retries: int = ...,
        retry_on: type[BaseException] | Sequence[type[BaseException]] = ...,
        backoff: float = ...,
        timeout: float | None = ...,
        result_ttl: float = ...,
        key: str | None = ...,
    ) -> _TaskDecorator: ...
    def task(  # type: ignore[misc]  # mypy cannot match the keywords against **options
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        **options: Any,
    ) -> Task[Any, Any] | _TaskDecorator:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=..., retries=...)``.

        Options: queue, priority, retries, retry_on, backoff, timeout, result_ttl, key.
        """
        if "connection" in options:
            raise InvalidOption(
                "connection= is given per call, inside the transaction it joins: "
                "task.options(connection=conn).delay(...), not @app.task(connection=...)"
            )
        decorator = _TaskDecorator(self, name, self.defaults.merge(**options))
        return decorator(fn) if fn is not None else decorator

    def _register(self, fn: Callable[..., Any], name: str | None, opts: Options) -> Task[Any, Any]:
        # Registered tasks resolve by name through the registry, so unlike plain callables
        # they may live in __main__ (a worker running in the same script finds them).
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidOption(f"bad name={name!r}: a task's name is a non-empty str")
        task_name = name or f"{fn.__module__}:{fn.__qualname__}"
        existing = self.registry.get(task_name)
        if existing is not None and existing.fn is not fn:
            raise ConfigurationError(
                f"two different functions are registered as task {task_name!r}; "
                "give one of them @app.task(name=...)"
            )
        task: Task[Any, Any] = Task(self, fn, task_name, opts)
        self.registry[task_name] = task
        return task

    # -- sending jobs ----------------------------------------------------------------------

    def options(self, **opts: Any) -> _Sender:
        """Options for the next RQ-style ``enqueue``: ``app.options(queue="slow").enqueue(f)``.
        They change the app's defaults for a plain callable, and a task's own options for a
        task (what it does not name stays the task's)."""
        return _Sender(self, opts)

    def enqueue(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Queue a call of any importable callable; the function need not know Conveyor."""
        return self._send([self._signature(fn, args, kwargs, None)])[0]

    async def enqueue_async(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]:
        """``enqueue`` for asyncio code: it does not block the event loop."""
        return (await self._send_async([self._signature(fn, args, kwargs, None)]))[0]

    def enqueue_many(self, signatures: Iterable[Signature[R]]) -> list[Job[R]]:
        """Queue many jobs in one broker round trip; all are written or none."""
        return self._send(list(signatures))

    async def enqueue_many_async(self, signatures: Iterable[Signature[R]]) -> list[Job[R]]:
        """``enqueue_many`` for asyncio code: it does not block the event loop."""
        return await self._send_async(list(signatures))

    def job(self, job_id: str) -> Job[Any]:
        """A handle on an existing job; raises ``JobNotFound`` for an unknown id."""
        validate_job_id(job_id)
        record = self.broker.get([job_id])[0]
        if record is None:
            raise JobNotFound(f"no job with id {job_id!r} (unknown, purged or its result expired)")
        return Job(self, job_id, record)

    # -- operating queues -------------------------------------------------------------------

    def requeue(self, job_ids: Sequence[str]) -> int:
        """Put failed, dead or cancelled jobs back on their queue with their retries afresh
        (attempt 0, deliveries counted anew); returns how many went back.

        Every id is checked before any job is requeued: an unknown one raises
        ``JobNotFound``, one that has not ended or that succeeded ``JobNotEnded``, one whose
        payload this app cannot decode (another serializer or secret than the workers')
        ``SerializationError``. A job's unique key and ``depends_on`` count as on enqueue:
        while another pending job holds its key it stays as it is (not counted), and it
        waits again for any dependency that is pending again."""
        return requeue(self, job_ids)

    def requeue_all(self, status: JobStatus, queue: str | None = None) -> int:
        """Requeue every failed, dead or cancelled job (``status``) of ``queue`` or of all
        queues, as ``requeue`` does, a page at a time; returns how many went back. Jobs
        whose payload this app cannot decode are left where they are, with a warning on the
        ``conveyor`` logger."""
        return requeue_all(self, status, queue)

    def delete(self, job_ids: Sequence[str]) -> dict[str, JobStatus | None]:
        """Delete jobs for good (record, payload and result, as if they had expired);
        returns, per id (each once, in order), the status the job had if it was deleted,
        else None.

        Every id is looked up before any job is touched: an unknown one raises
        ``JobNotFound``. A queued or scheduled job is cancelled first, as ``Job.cancel``
        does (the rest of its workflow fails, its dependents are released and find it
        without a record), then deleted. An ended one is deleted as it is: a job that
        depends on it and still waits for another dependency fails with
        ``DependencyFailed`` when it is released, as after the record's result TTL ran out.
        A running job is left to its worker (None) while the worker holds a live lease on
        it: cancel it, and delete it once it ended; one whose lease expired (its worker is
        gone) is deleted, and a late finish from that worker is refused. None also for a
        job deleted, purged or expired meanwhile."""
        return delete(self, job_ids)

    def pause(self, queue: str) -> None:
        """Stop workers taking the queue's jobs until ``resume``: they stay queued, running
        ones finish. Kept in the broker, so a worker started later finds it paused."""
        self.broker.pause(validate_queue(queue))

    def resume(self, queue: str) -> None:
        """Let workers take the queue's jobs again; blocked ones do within a second."""
        self.broker.resume(validate_queue(queue))

    # -- events ----------------------------------------------------------------------------

    def read_events(
        self, after: str | None = None, *, block: float = 0.0, limit: int = 100
    ) -> list[Event]:
        """Events from the broker's event log, oldest first: those after the cursor
        ``after`` (None: from the oldest kept; ``event.cursor`` of the last one read: on
        from there), waiting up to ``block`` seconds while there is none. Reading takes
        nothing out: any number of readers see every event. docs/observability.md lists
        the types and their fields."""
        return _events.read(self.broker, after, block, limit)

    def follow_events(
        self,
        *,
        since: float | dt.timedelta | None = None,
        types: str | Sequence[str] = (),
    ) -> Iterator[Event]:
        """Events as they are published, for ever (what ``conveyor events`` prints): from
        now on, or first those kept from the last ``since`` (seconds or a timedelta).
        ``types``: globs of the types wanted, e.g. ``"job.*"`` or ``["job.failed",
        "job.dead"]`` (a glob that matches no type is a ``ConfigurationError``). A broker
        that is away is waited for, with a warning on the ``conveyor`` logger."""
        back = since.total_seconds() if isinstance(since, dt.timedelta) else since
        patterns = (types,) if isinstance(types, str) else tuple(types)
        return _events.follow(self.broker, self.clock.time(), since=back, types=patterns)

    def _announce(self, envelopes: Sequence[Envelope], tasks: Sequence[str]) -> list[bytes]:
        """The ``job.enqueued`` events of a batch (none when events are off): the broker
        publishes each with its job, if it writes it."""
        if not self.events:
            return []
        return _events.enqueued(envelopes, tasks, self.clock.time())

    def _cancel_event(self, job_id: str) -> bytes | None:
        """The ``job.cancelled`` event a cancel publishes if it cancels a pending job (the
        payload is read for the task's name: one read, only with events on)."""
        if not self.events:
            return None
        payload = self.broker.payload(job_id)
        if payload is None:
            return None  # unknown: the cancel says so
        try:
            message = self.codec.decode_message(payload)
            task, queue = message.task, message.queue
        except ConveyorError:  # not written by Conveyor: its queue is in the record
            record = self.broker.get([job_id])[0]
            task, queue = "", record.queue if record is not None else ""
        reason = CANCELLED_PENDING
        return _events.job_event(
            "job.cancelled", self.clock.time(), job_id, task, queue, reason=reason
        )

    def _publish(self, events: Sequence[bytes]) -> None:
        """Publish the events of a change already made (cancel, requeue): a broker error
        costs the events, with a warning, never the change."""
        if not events or not self.events:
            return
        try:
            self.broker.publish(events)
        except BrokerError as exc:
            log.warning("%d event(s) were not published: %s", len(events), exc)

    def _signature(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options | None,
    ) -> Signature[Any]:
        if isinstance(fn, Task):
            return Signature(self, fn.name, args, kwargs, opts or fn.opts)
        if not callable(fn):
            raise ValidationError(f"enqueue takes a callable, got {fn!r}")
        return Signature(self, callable_name(fn), args, kwargs, opts or self.defaults)

    def envelope(self, sig: Signature[Any]) -> Envelope:
        """Encode one call into what the broker stores; raises before anything is written.
        (No middleware runs here: sending paths go through ``_sending``.)"""
        message, eta = self._message(sig)
        return self._seal(message, eta)

    def _message(self, sig: Signature[Any]) -> tuple[Message, float | None]:
        """The message for one call, and its eta."""
        if not isinstance(sig, Signature):
            raise ValidationError(
                f"cannot enqueue {sig!r}: enqueue_many takes signatures, e.g. "
                "app.enqueue_many(task.s(x) for x in items)"
            )
        o = sig.opts  # checked when they were given (Options.merge)
        now = self.clock.time()
        job_id = o.job_id or self.broker.new_job_id(o.key, o.depends_on)
        eta = o.eta if o.eta is not None else (now + o.delay if o.delay else None)
        message = Message(
            id=job_id,
            task=sig.name,
            args=list(sig.args),
            kwargs=sig.kwargs,
            queue=o.queue,
            priority=o.priority,
            retries=o.retries,
            retry_on=[f"{t.__module__}.{t.__qualname__}" for t in o.retry_on] if o.retry_on else [],
            backoff=o.backoff,
            timeout=o.timeout,
            result_ttl=o.result_ttl,
            enqueued_at=now,
            key=o.key,
            rate=o.rate,
            rate_key=o.rate_key,
        )
        if o.depends_on:  # only jobs with dependencies pay for them
            message.depends_on = list(o.depends_on)
            message.allow_failed_dependencies = o.allow_failed_dependencies
        return message, eta

    def _seal(self, message: Message, eta: float | None) -> Envelope:
        if message.rate_key is not None:  # what the workers' counters can hold
            if message.rate is None:  # a task may give one and the call the other: now
                raise InvalidOption(
                    f"rate_key={message.rate_key!r} without rate=: the key says whose budget "
                    "a job counts against, rate= how large it is; give both, e.g. "
                    f".options(rate='10/s', rate_key={message.rate_key!r})"
                )
            ratelimit.check_rate_key(self, message)
        payload = self.codec.encode_message(message)
        depends_on = tuple(message.depends_on) if message.depends_on else ()
        m = message
        return Envelope(m.id, m.queue, payload, m.priority, eta, m.key, depends_on)

    def _sending(self) -> Sending:
        """One enqueue call, seen by the producer middleware (see ``_hooks.Sending``)."""
        return Sending(self, self._hooks)

    def _send(self, sigs: Sequence[Signature[R]]) -> list[Job[R]]:
        connection = _connection(sigs)
        if self._hooks is None:
            envelopes = [self.envelope(s) for s in sigs]
            if not envelopes:
                return []
            events = self._announce(envelopes, [s.name for s in sigs])
            if connection is None:
                return [Job(self, i) for i in self.broker.enqueue(envelopes, events)]
            return [Job(self, i) for i in self.broker.enqueue_in(connection, envelopes, events)]
        with self._sending() as sending:
            envelopes = [sending.envelope(s) for s in sigs]
            if not envelopes:
                return []
            events = self._announce(envelopes, [s.name for s in sigs])
            if connection is None:
                ids = self.broker.enqueue(envelopes, events)
            else:
                ids = self.broker.enqueue_in(connection, envelopes, events)
            sending.sent(envelopes, ids)  # a job deduplicated by its key was not sent
        return [Job(self, i) for i in ids]

    async def _send_async(self, sigs: Sequence[Signature[R]]) -> list[Job[R]]:
        connection = _connection(sigs)
        broker = await self._abroker()
        rate_keys = {
            s.opts.rate_key
            for s in sigs
            if isinstance(s, Signature) and s.opts.rate_key is not None and s.opts.rate
        }
        if rate_keys:  # what _seal checks, asked of the store off the event loop, once each
            await broker.kv.check_texts_async(rate_keys, "rate key")
        with self._sending() as sending:
            envelopes = [sending.envelope(s) for s in sigs]
            if not envelopes:
                return []
            events = self._announce(envelopes, [s.name for s in sigs])
            if connection is None:
                ids = await broker.enqueue_async(envelopes, events)
            else:
                ids = await broker.enqueue_in_async(connection, envelopes, events)
            sending.sent(envelopes, ids)
        return [Job(self, i) for i in ids]


def _connection(sigs: Sequence[Signature[Any]]) -> Any:
    """The one ``connection=`` a batch is sent through (None: the broker's own)."""
    for s in sigs:  # the usual batch names none: no set to build
        if isinstance(s, Signature) and s.opts.connection is not None:
            break
    else:
        return None
    given = {id(s.opts.connection): s.opts.connection for s in sigs if isinstance(s, Signature)}
    if not given or list(given) == [id(None)]:
        return None
    if len(given) > 1:
        raise InvalidOption(
            "enqueue_many got signatures with different connection= (or some without): "
            "a batch is written in one transaction, so give them all the same connection"
        )
    return next(iter(given.values()))


class _TaskDecorator:
    def __init__(self, app: Conveyor, name: str | None, opts: Options) -> None:
        self._app = app
        self._name = name
        self._opts = opts

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Task[Any, Any]:
        return self._app._register(fn, self._name, self._opts)
