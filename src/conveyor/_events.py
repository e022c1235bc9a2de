"""Events: what happened to jobs and workers, as small JSON objects in the broker's capped
event stream (docs/observability.md, "Events", is the reference for the schema).

Producers (the app, the worker) build and encode events here; brokers store and hand out
the encoded bytes without reading them (``Broker.publish``, ``read_events``, and the
events that ride on ``enqueue`` and ``finish``). Readers (``conveyor events``,
``Conveyor.read_events``) decode them back into ``Event``.

Every event has ``type`` and ``time`` (epoch seconds of the process that saw it happen);
job events ``job_id``, ``task`` (``""`` when the payload could not be decoded) and
``queue``; worker events, and job events a worker publishes, ``worker_id``. The rest
applies to some types only and is left out elsewhere (see ``Event``).
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec

from ._backoff import RANDOM, Backoff
from ._errors import BrokerAuthError, BrokerError, BrokerGone, ConfigurationError
from ._message import Envelope, JobStatus, WorkerInfo

if TYPE_CHECKING:
    from .brokers._port import Broker

log = logging.getLogger("conveyor")
T = TypeVar("T")

JOB_TYPES = (
    "job.enqueued",
    "job.started",
    "job.retried",
    "job.succeeded",
    "job.failed",
    "job.dead",
    "job.cancelled",
    "job.requeued",
)
WORKER_TYPES = ("worker.online", "worker.heartbeat", "worker.offline")
TYPES = JOB_TYPES + WORKER_TYPES

# How a job's end is named, by the status its worker recorded.
ENDED = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.DEAD: "job.dead",
    JobStatus.CANCELLED: "job.cancelled",
}

# Why a job went back to its queue (``job.requeued``'s reason).
REQUEUED = "requeued"  # app.requeue, conveyor requeue
WORKER_STOPPED = "its worker stopped"  # handed back by a stopping worker
RATE_LIMITED = "rate limited"  # put back until its rate limit allows it


class Event(msgspec.Struct, omit_defaults=True, gc=False):
    """One event. Fields that do not apply to a type are None and left out of its JSON.

    ``attempt``: 0 for a job's first run, n for its n-th retry (started, retried,
    succeeded, failed, dead, cancelled by its worker). ``deliveries``: how often the job
    was handed out, this time included (started; above 1 without a ``job.requeued`` in
    between, an earlier delivery was lost with its worker). ``duration``: seconds the run
    took (retried, succeeded, failed, cancelled while running). ``error``: the qualified
    type of what the task raised (retried, failed). ``reason``: why it was dead-lettered,
    cancelled or requeued. ``eta``: when it runs (enqueued for later, retried, requeued
    until its rate limit allows it). ``cursor``: where a reader found the event (set by
    ``read_events``, never published): pass it back as ``after`` to read on.
    """

    type: str
    time: float
    job_id: str | None = None
    task: str | None = None
    queue: str | None = None
    worker_id: str | None = None
    attempt: int | None = None
    deliveries: int | None = None
    duration: float | None = None
    error: str | None = None
    reason: str | None = None
    eta: float | None = None
    priority: int | None = None
    depends_on: list[str] | None = None
    # worker.* only
    host: str | None = None
    pid: int | None = None
    queues: list[str] | None = None
    pool: str | None = None
    concurrency: int | None = None
    processed: int | None = None
    cursor: str = ""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> Event:
    """An event as published; raises ``msgspec.DecodeError`` (or ``ValidationError``) for
    bytes that are not one."""
    return _decoder.decode(data)


def stamp(seconds: float) -> float:
    """Times and durations to the microsecond: the float's last digits are noise, and bytes
    (truncated, not ``round``: that costs ~1 µs, more than building the event)."""
    return int(seconds * 1_000_000) / 1_000_000


# -- what the app publishes --------------------------------------------------------------------


def enqueued(envelopes: Sequence[Envelope], tasks: Sequence[str], now: float) -> list[bytes]:
    """One ``job.enqueued`` per envelope; the broker publishes each one only if its job is
    written (not for an id that exists, nor one deduplicated by its unique key)."""
    # Every task.delay() makes one: stamp inlined, and no loop for a lone job (~0.5 µs,
    # docs/architecture.md, twelfth round).
    at = int(now * 1_000_000) / 1_000_000
    if len(envelopes) == 1 == len(tasks):
        return [_enqueued(envelopes[0], tasks[0], at, now)]
    return [_enqueued(env, task, at, now) for env, task in zip(envelopes, tasks, strict=True)]


def _enqueued(env: Envelope, task: str, at: float, now: float) -> bytes:
    eta, deps = env.eta, env.depends_on
    if eta is not None and not (eta > now and math.isfinite(eta)):
        eta = None
    return _encoder.encode(
        Event(
            "job.enqueued",
            at,
            job_id=env.id,
            task=task,
            queue=env.queue,
            priority=env.priority,
            eta=None if eta is None else stamp(eta),
            depends_on=list(deps) if deps else None,
        )
    )


def job_event(
    type_: str, now: float, job_id: str, task: str, queue: str, **fields: object
) -> bytes:
    """Any job event (fields as ``Event`` names them)."""
    return _encoder.encode(
        Event(type_, stamp(now), job_id=job_id, task=task, queue=queue, **fields)  # type: ignore[arg-type]
    )


def worker_event(type_: str, now: float, info: WorkerInfo) -> bytes:
    """``worker.online`` (with what the worker runs), ``worker.heartbeat`` and
    ``worker.offline`` (with how many jobs it finished)."""
    if type_ == "worker.online":
        event = Event(
            type_,
            stamp(now),
            worker_id=info.id,
            host=info.host,
            pid=info.pid,
            queues=list(info.queues),
            pool=info.pool,
            concurrency=info.concurrency,
        )
    else:
        event = Event(type_, stamp(now), worker_id=info.id, processed=info.processed)
    return _encoder.encode(event)


# -- reading -----------------------------------------------------------------------------------


def read(broker: Broker, after: str | None, block: float, limit: int) -> list[Event]:
    """The events after ``after`` (None: the oldest kept), each with its ``cursor``. Bytes
    that are not an event (written by hand) are skipped with a warning."""
    out = []
    for cursor, data in broker.read_events(after, block, limit):
        try:
            event = decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("skipped event %s, which is not a Conveyor event: %s", cursor, exc)
            continue
        event.cursor = cursor
        out.append(event)
    return out


def check_types(patterns: Iterable[str]) -> tuple[str, ...]:
    """Type globs (``job.*``, ``worker.offline``); one that matches no type is a
    ``ConfigurationError`` naming the types, so a typo does not silently show nothing."""
    found = tuple(patterns)
    for p in found:
        if not any(fnmatch.fnmatchcase(t, p) for t in TYPES):
            raise ConfigurationError(
                f"event type {p!r} matches no event type; use a glob over {', '.join(TYPES)}"
            )
    return found


def matches(event: Event, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(event.type, p) for p in patterns)


def follow(
    broker: Broker,
    now: float,
    *,
    since: float | None = None,
    types: Sequence[str] = (),
    block: float = 1.0,
    backoff: Backoff | None = None,
) -> Iterator[Event]:
    """Events as they are published, for ever: those published from this call on, or, with
    ``since`` (seconds), first those kept from the last ``since`` seconds before ``now``.
    ``types``: globs of the types wanted (all when empty). Where to start is settled here,
    not at the first ``next()``. A broker that is away is waited for, with a warning (what
    it kept meanwhile is read when it is back, or from its end if its log came back
    shorter); one that refuses the credentials (``BrokerAuthError``), or is gone for good
    (``BrokerGone``), is not: the error is raised."""
    patterns = check_types(types)
    if since is not None and (
        isinstance(since, bool)
        or not isinstance(since, int | float)
        or not math.isfinite(since)
        or since < 0
    ):
        raise ConfigurationError(
            f"bad since={since!r}: give the seconds of the recent past to read first, 0 or "
            "more (since=300 or timedelta(minutes=5)), or None to read from now on"
        )
    backoff = backoff or Backoff(0.1, 5.0, RANDOM.random)
    after: str | None = None  # with since: from the oldest event kept
    while since is None and after is None:
        after = _retrying(backoff, broker.events_tail)
    oldest = None if since is None else now - since
    return _follow(broker, after, oldest=oldest, patterns=patterns, block=block, backoff=backoff)


def _follow(
    broker: Broker,
    after: str | None,
    *,
    oldest: float | None,
    patterns: Sequence[str],
    block: float,
    backoff: Backoff,
) -> Iterator[Event]:
    away = False
    while True:
        events = _retrying(backoff, functools.partial(read, broker, after, block, 500))
        if events is None:
            away = True
            continue
        # Back, or nothing came in a block: from where its log is, should it have gone back
        # (see _behind). Not only after an error: a restart quick enough for the client's
        # own retries (redis-py's) raises none, and left a reader past the emptied log's end
        # reading nothing until the new numbers caught up.
        if away or not events:
            away = False
            behind = _behind(broker, after, backoff)
            if behind != after:
                after = behind
                continue
        for event in events:
            after = event.cursor
            if (oldest is None or event.time >= oldest) and matches(event, patterns):
                yield event


def _behind(broker: Broker, after: str | None, backoff: Backoff) -> str | None:
    """Where to read on once the broker is back: ``after``, unless its log now ends before
    it (a Redis restored from an older copy, failed over to a lagging replica, or emptied
    numbers new events from there again, which a reader past them would never see): then
    from the log's end, with a warning. (Cursors that are not plain numbers, a sharded
    prefix's, are taken as they are.)"""
    if after is None or not after.isdigit():
        return after
    tail = _retrying(backoff, broker.events_tail)
    if tail is None or not tail.isdigit():
        return after
    if int(tail) >= int(after):
        return after
    log.warning(
        "the broker's event log now ends at event %s, before event %s that this reader had "
        "read (restored from an older copy, or emptied): reading on from its end; what "
        "it published before that while away may be missed",
        tail,
        after,
    )
    return tail


def _retrying(backoff: Backoff, call: Callable[[], T]) -> T | None:
    """``call()``, or None after a broker error (logged, and waited out)."""
    try:
        out = call()
    except (BrokerAuthError, BrokerGone):
        raise  # the same credentials are refused again; a deleted file stays deleted
    except BrokerError as exc:
        delay = backoff.next()
        log.warning("cannot read events from the broker, retrying in %.1f s: %s", delay, exc)
        time.sleep(delay)
        return None
    if backoff.failures:
        log.info("the broker is reachable again")
        backoff.reset()
    return out


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m``, ``2d``, ``250ms`` as seconds; anything else is a
    ``ConfigurationError`` with examples."""
    cleaned = text.strip().lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _DURATION.findall(cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise ConfigurationError(
                f"bad duration {text!r}: write seconds (90) or amounts with units, e.g. "
                "30s, 5m, 1h30m, 2d, 250ms"
            ) from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"bad duration {text!r}: use zero or more seconds")
    return seconds
