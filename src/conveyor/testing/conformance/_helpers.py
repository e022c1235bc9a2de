"""What the conformance suite's tests are written with: time, threads, jobs and broker calls."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from ..._clock import FakeClock
from ..._message import DEFAULT_QUEUE, Delivery, Envelope, JobStatus, WorkerInfo, new_job_id
from ...brokers._port import Broker, Finish

T = TypeVar("T")

LONG = 600.0  # seconds: a lease or TTL no test outlives, on a fake or a real clock
# Seconds: how soon a blocked wait or fetch must return once woken. Well under what is left
# of a BLOCK after the tests' 0.1 s head start (0.8 s), so a wait that only returns when
# its block ends still fails; 0.3 was missed by 0.06-0.09 s on a loaded 2-core machine
# running four test processes (a woken PostgreSQL wait, a woken Redis event reader).
PROMPT = 0.5
BLOCK = 0.9  # seconds: the longest real-time block a test sets up (kept under 1 s)


class Timeline:
    """Moves a test through time: a ``FakeClock`` jumps; real time is slept through.

    Durations are in units: one second on a fake clock, ``real_unit`` seconds on real time.
    """

    def __init__(self, clock: FakeClock | None, real_unit: float) -> None:
        self.clock = clock
        self.unit = 1.0 if clock is not None else real_unit

    @property
    def now(self) -> float:
        return self.clock.time() if self.clock is not None else time.time()

    def span(self, units: float) -> float:
        return units * self.unit

    def advance(self, units: float) -> None:
        if self.clock is not None:
            self.clock.advance(self.span(units))
        else:
            time.sleep(self.span(units))


class _Background(Generic[T]):
    """Run a call in a thread; ``join`` returns its value or re-raises its error."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._out: list[T] = []
        self._err: list[BaseException] = []
        self.returned_at = 0.0  # time.monotonic() when the call returned
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._out.append(self._fn())
        except BaseException as exc:
            self._err.append(exc)
        finally:
            self.returned_at = time.monotonic()

    def join(self, timeout: float = 10.0) -> T:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not return"
        if self._err:
            raise self._err[0]
        return self._out[0]


# How the helpers make job ids: the broker under test's ``new_job_id`` while a test runs
# (``minting``), as the app's are made, so a broker that places jobs by their id (a sharded
# Redis) places these as it would the app's.
_minter: list[Callable[..., str]] = []


@contextlib.contextmanager
def minting(broker: Broker) -> Iterator[None]:
    """Make the helpers' job ids with ``broker.new_job_id`` inside the block."""
    _minter.append(broker.new_job_id)
    try:
        yield
    finally:
        _minter.pop()


def mint(key: str | None = None, depends_on: Sequence[str] = ()) -> str:
    """A job id for a job with this key and these dependencies (see ``minting``)."""
    if not _minter:
        return new_job_id()
    return _minter[-1](key, depends_on)


def by_shard(
    broker: Broker, items: Sequence[T], job_of: Callable[[T], str] | None = None
) -> list[list[T]]:
    """``items`` (job ids, or what ``job_of`` maps to one) split by the shard that holds
    each one's job, each part in the order given: the order a broker promises across its
    jobs holds among the jobs of one shard (``Broker.shards``; one shard: the whole list)."""
    parts: list[list[T]] = [[] for _ in range(broker.shards)]
    for item in items:
        parts[broker.shard_of(job_of(item) if job_of else str(item))].append(item)
    return parts


def envelope(
    queue: str = DEFAULT_QUEUE,
    *,
    priority: int = 0,
    eta: float | None = None,
    key: str | None = None,
    payload: bytes | None = None,
    depends_on: Sequence[str] = (),
) -> Envelope:
    job_id = mint(key, depends_on)
    # Not JSON and not UTF-8: a broker must move payloads as opaque bytes.
    body = payload if payload is not None else b"\x00\xff payload of " + job_id.encode()
    return Envelope(
        id=job_id,
        queue=queue,
        payload=body,
        priority=priority,
        eta=eta,
        key=key,
        depends_on=tuple(depends_on),
    )


def dependent(*depends_on: str, queue: str = DEFAULT_QUEUE) -> Envelope:
    """A job that waits for ``depends_on``."""
    return envelope(queue, depends_on=depends_on)


def fetch(
    broker: Broker,
    queues: Sequence[str] = (DEFAULT_QUEUE,),
    *,
    count: int = 100,
    lease: float = LONG,
    block: float = 0.0,
    consumer: str = "consumer-1",
) -> list[Delivery]:
    return broker.fetch(list(queues), consumer, count, lease, block)


def fetch_one(broker: Broker, queues: Sequence[str] = (DEFAULT_QUEUE,), **kw: float) -> Delivery:
    got = broker.fetch(list(queues), "consumer-1", 1, kw.get("lease", LONG), 0.0)
    assert len(got) == 1, f"expected one delivery from {list(queues)}, got {got}"
    return got[0]


def finish(
    broker: Broker,
    delivery: Delivery,
    status: JobStatus = JobStatus.SUCCEEDED,
    *,
    result: bytes | None = b"result",
    result_ttl: float = LONG,
    retry: Envelope | None = None,
    reason: str = "",
) -> bool:
    [done] = broker.finish(
        [Finish(delivery, status, result, result_ttl, retry=retry, reason=reason)]
    )
    return done


def status(broker: Broker, job_id: str) -> JobStatus | None:
    [record] = broker.get([job_id])
    return None if record is None else record.status


def worker_info(worker_id: str, now: float) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="host-1",
        pid=4242,
        queues=["default", "images"],
        concurrency=8,
        pool="threads",
        started_at=now,
        processed=7,
    )
