"""The job envelope and the records around it: pure data, no I/O.

A ``Message`` is what the producer encodes and the worker decodes. Brokers never decode it:
they move opaque ``payload`` bytes plus the few fields they route on (``Envelope``), so a
garbage payload written straight into the broker reaches the worker, which dead-letters it.
"""

from __future__ import annotations

import _thread
import enum
import os
import re
import time
from typing import Annotated, Any

import msgspec

from ._errors import InvalidName, InvalidOption

DEFAULT_QUEUE = "default"
MIN_PRIORITY = 0
MAX_PRIORITY = 9

# Message.headers (see conveyor.middleware): how many, how long a name, how many characters
# in all. The decoder holds a payload to the first two; check_headers, on sending, to all.
MAX_HEADERS = 32
MAX_HEADER_KEY = 128
MAX_HEADERS_SIZE = 8192
HeaderName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HEADER_KEY)]
Headers = Annotated[dict[HeaderName, str], msgspec.Meta(max_length=MAX_HEADERS)]

# (\Z, not $: $ also matches before a last newline.) Not dots alone: "." and ".." are
# path steps in a URL, so the dashboard's /job/.. and /api/queue/../pause reached other pages.
_NAME = re.compile(r"^(?!\.+\Z)[A-Za-z0-9_.\-]{1,64}\Z")
_JOB_ID = re.compile(r"^(?!\.+\Z)[A-Za-z0-9_.\-]{1,128}\Z")


class JobStatus(enum.StrEnum):
    """Where a job is in its life; the values are what ``conveyor jobs STATUS`` and JSON show.

    ``queued``: ready for the next free worker. ``scheduled``: waiting for its time, the step
    before it or its ``depends_on=`` jobs. ``running``: a worker holds it under a lease. The
    others are terminal: ``succeeded``, ``failed`` (no retry left), ``cancelled``, ``dead``
    (dead-lettered, with a reason).
    """

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def terminal(self) -> bool:
        """True for the statuses a job ends in: succeeded, failed, cancelled, dead."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD})


def validate_queue(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidName(
            f"bad queue name {name!r}: use 1-64 characters from letters, digits, '_', '.', '-'"
            ", not dots alone"
        )
    return name


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise InvalidName(
            f"bad job id {job_id!r}: use 1-128 characters from letters, digits, '_', '.', '-'"
            ", not dots alone"
        )
    return job_id


def validate_priority(priority: int) -> int:
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise InvalidOption(
            f"bad priority={priority!r}: priority takes a whole number from 0 (low) to 9 "
            "(high); write priority=5"
        )
    return priority


# The random part of new ids: the system's (os.urandom), drawn for 128 ids at a time (one
# system call, not one per id: half the cost of minting one) and handed out under a lock.
# Not a seeded generator's: an id may be all that guards a job's result (examples/flask
# and examples/fastapi give it to the client that asks for the result), and a Mersenne
# Twister's state can be rebuilt from a few hundred of its outputs, so the ids a client is
# given would tell it everybody else's. A forked child drops the parts its parent drew
# (it would mint the parent's ids again) and takes a new lock (a thread of the parent may
# have held it at the fork). (_thread, not threading: importing conveyor starts no thread
# machinery.)
_PARTS_PER_DRAW = 128
_parts: list[str] = []
_parts_lock = _thread.allocate_lock()


def _forget_parts() -> None:
    global _parts_lock
    _parts.clear()
    _parts_lock = _thread.allocate_lock()


os.register_at_fork(after_in_child=_forget_parts)


def new_job_id() -> str:
    """A 26-character id that sorts by creation time (ms clock + randomness)."""
    with _parts_lock:
        if not _parts:
            drawn = os.urandom(7 * _PARTS_PER_DRAW).hex()
            _parts.extend([drawn[i : i + 14] for i in range(0, len(drawn), 14)])
        part = _parts.pop()
    return f"{int(time.time() * 1000):012x}{part}"


class Message(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False, gc=False):
    """What the worker needs to run one job.

    Middleware sees it (``conveyor.middleware``): ``id``, ``task``, ``args``, ``kwargs``,
    ``queue``, ``priority``, ``attempt`` (0 for the first run), ``retries``, ``enqueued_at``
    and ``headers`` are its to read; ``headers`` is its to write, in ``before_enqueue``.

    ``gc=False`` here and on ``Envelope`` and ``Delivery``: made by the thousand per second,
    and never part of a reference cycle (built from values that cannot point back at them),
    so the garbage collector need not track them (a batch enqueue ran ~10% faster).
    """

    id: str
    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    attempt: int = 0  # 0 for the first run, n for the n-th retry
    retries: int = 0  # how many retries are allowed
    retry_on: list[str] = []  # qualified exception type names; empty means "any Exception"
    backoff: float = 1.0  # base delay in seconds of the exponential backoff
    timeout: float | None = None
    result_ttl: int = 86400
    enqueued_at: float = 0.0
    key: str | None = None  # uniqueness key
    rate: str | None = None  # rate limit, e.g. "100/m", shared by every job of the task
    rate_key: str | None = None  # limit per key instead (one tenant cannot starve others)
    workflow: dict[str, Any] | None = None  # what happens after this step (workflows.py)
    depends_on: list[str] = []  # ids of jobs that must end first (their outcome is checked)
    allow_failed_dependencies: bool = False  # run even if one of them did not succeed
    # Context producer middleware passes to worker middleware (a trace id, say); checked by
    # middleware.check_headers, left out of the payload when empty.
    headers: Headers = {}


class Envelope(msgspec.Struct, frozen=True, gc=False):
    """What a broker routes on: the job id, where it goes, when, and the opaque payload."""

    id: str
    queue: str
    payload: bytes
    priority: int = 0
    eta: float | None = None  # wall-clock time before which the job is not delivered
    key: str | None = None  # uniqueness key: a second enqueue while pending returns the first
    # Ids of jobs this one waits for: while any of them is not terminal, the job is parked
    # and becomes due when the last one ends (see the broker contract in brokers/_port.py).
    depends_on: tuple[str, ...] = ()


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """One job handed to one worker under a lease.

    ``token`` fences this delivery: finishing, renewing, retrying or releasing with a stale
    token is refused. ``deliveries`` counts how many times the job has been handed out, this
    one included (the worker dead-letters a job past its bound).
    """

    id: str
    queue: str
    payload: bytes
    token: str
    deliveries: int
    priority: int = 0


class JobRecord(msgspec.Struct):
    """A job's state as the broker keeps it, for ``Job`` handles and ``conveyor info``."""

    id: str
    status: JobStatus
    queue: str
    result: bytes | None = None  # encoded Outcome once terminal
    progress: float | None = None
    progress_note: str | None = None
    updated_at: float = 0.0
    deliveries: int = 0  # how many times it was handed out (since it was last queued afresh)
    reason: str = ""  # why it failed, died or was cancelled, as ``entries`` shows it


class RemoteError(msgspec.Struct):
    type: str
    message: str
    traceback: str = ""


class Outcome(msgspec.Struct, omit_defaults=True):
    """The stored result of a finished job: a value, an error, or a reason it went dead."""

    value: Any = None
    error: RemoteError | None = None
    reason: str | None = None  # why it was cancelled or dead-lettered


class JobEntry(msgspec.Struct):
    """A job as ``entries`` lists it, with its payload (b"" where the broker no longer keeps
    one): failed and dead ones to inspect and requeue, queued ones to see what runs next.
    ``at`` is when the job last changed (entered its status, or reported progress)."""

    id: str
    queue: str
    payload: bytes
    status: JobStatus
    reason: str
    at: float


class QueueStats(msgspec.Struct):
    queue: str
    queued: int = 0
    scheduled: int = 0
    running: int = 0
    failed: int = 0
    dead: int = 0
    succeeded: int = 0
    cancelled: int = 0
    paused: bool = False  # fetch hands out none of its jobs (``broker.pause``)


class WorkerInfo(msgspec.Struct):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    pool: str
    started_at: float
    seen_at: float = 0.0
    processed: int = 0
    busy: int = 0  # run slots holding a job at the last heartbeat (what the dashboard shows)
