"""What the overview shows, read from the broker once for every viewer.

A sample is the queues' counts (``stats``), the live workers and when the job at the head of
each queue entered it: three port calls plus one ``entries`` of one job per non-empty queue,
whatever the backlog. One thread takes a sample every ``refresh`` seconds (every
``IDLE_REFRESH`` when nobody has looked for ``IDLE_AFTER`` seconds), and a request that finds
the latest one older than ``refresh`` takes one itself, so two viewers cost what one does.

The same thread follows the broker's event log: job ends counted per ``BUCKET`` seconds and
per queue (the throughput chart), and a copy of the log as the broker keeps it, indexed by
job id (a job page's timeline). The backlog chart is drawn from the samples, so it covers
the time since the dashboard started; throughput reaches back as far as the log does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .. import _events
from .._errors import ConveyorError
from .._events import Event
from .._message import JobStatus, QueueStats, WorkerInfo
from ..brokers._port import EVENTS_KEPT

if TYPE_CHECKING:
    from .._app import Conveyor

log = logging.getLogger("conveyor.dashboard")

BUCKET = 5  # seconds per point of the charts
WINDOW = 15 * 60  # seconds of history the charts show
IDLE_AFTER = 60.0  # seconds without a viewer after which the thread samples less often
IDLE_REFRESH = 10.0
_PAGE = 1000  # events read per call
_MOST_EVENTS = 50_000  # events read per sample at most; past that the reader skips ahead
_DONE = {"job.succeeded": 0, "job.failed": 1, "job.dead": 1}


@dataclass(frozen=True)
class Sample:
    at: float  # epoch seconds, on the app's clock
    seq: int  # grows by one per sample: what the live stream compares
    stats: list[QueueStats]
    workers: list[WorkerInfo]
    heads: dict[str, float]  # queue -> when its next job entered the queue


@dataclass
class _Log:
    """The copy of the event log: job events by job, ends per bucket per queue."""

    kept: int
    events: deque[Event] = field(default_factory=deque)
    by_job: dict[str, list[Event]] = field(default_factory=dict)
    done: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    # job -> the jobs enqueued with depends_on naming it, while their job.enqueued is kept
    # (the port keeps a job's dependents only while it is pending, and does not list them)
    dependents: dict[str, list[str]] = field(default_factory=dict)
    seen: bool = False  # any event at all: are the workers publishing?

    def add(self, event: Event) -> None:
        self.seen = True
        kind = _DONE.get(event.type)
        if kind is not None and event.queue is not None:
            counts = self.done.setdefault(int(event.time // BUCKET), {})
            counts.setdefault(event.queue, [0, 0])[kind] += 1
        if event.job_id is None:
            return
        self.events.append(event)
        self.by_job.setdefault(event.job_id, []).append(event)
        if event.type == "job.enqueued":
            for dep in event.depends_on or ():
                self.dependents.setdefault(dep, []).append(event.job_id)
        while len(self.events) > self.kept:
            old = self.events.popleft()
            assert old.job_id is not None
            mine = self.by_job[old.job_id]
            mine.pop(0)  # events come in order: a job's oldest is the log's oldest
            if not mine:
                del self.by_job[old.job_id]
            if old.type == "job.enqueued":
                self._forget_dependent(old.job_id, old.depends_on or ())

    def _forget_dependent(self, job_id: str, depends_on: list[str] | tuple[()]) -> None:
        for dep in depends_on:
            children = self.dependents.get(dep)
            if children is not None and job_id in children:
                children.remove(job_id)  # the oldest, mostly: events leave in order
                if not children:
                    del self.dependents[dep]

    def trim(self, now: float) -> None:
        first = int((now - WINDOW) // BUCKET)
        for bucket in [b for b in self.done if b < first]:
            del self.done[bucket]


class Monitor:
    def __init__(self, app: Conveyor, refresh: float) -> None:
        self.app = app
        self.refresh = refresh
        self._sampling = threading.Lock()  # one sample at a time (the broker's calls)
        self._data = threading.Lock()  # the figures below, briefly
        self._sample: Sample | None = None
        self._backlog: deque[tuple[float, dict[str, int]]] = deque()
        self._log = _Log(kept=EVENTS_KEPT)  # the broker's own figure once it is open
        self._cursor: str | None = None  # None: from the oldest event the broker keeps
        self._seen = time.monotonic()  # when a viewer last asked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Sample in the background (once; a no-op with ``refresh`` 0: requests sample)."""
        with self._data:
            if self._thread is not None or self.refresh <= 0 or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name="conveyor-dashboard", daemon=True
            )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._take(stale=self._sample)
            except ConveyorError as exc:  # shown by the requests that sample themselves
                log.warning("dashboard: cannot read the broker: %s", exc)
            idle = time.monotonic() - self._seen > IDLE_AFTER
            self._stop.wait(max(self.refresh, IDLE_REFRESH) if idle else self.refresh)

    # -- samples ---------------------------------------------------------------------------

    def snapshot(self) -> Sample:
        """The latest sample, taken now if it is older than ``refresh`` (a viewer asked)."""
        self._seen = time.monotonic()
        self.start()
        sample = self._sample
        if sample is not None and self.app.clock.time() - sample.at < self.refresh:
            return sample
        return self._take(stale=sample)

    def counts(self) -> list[QueueStats]:
        """The queues' counts: the latest sample's while it is fresh, else ``stats`` read
        now (a list page needs no more of a sample)."""
        self._seen = time.monotonic()
        self.start()
        sample = self._sample
        if sample is not None and self.app.clock.time() - sample.at < self.refresh:
            return sample.stats
        return self.app.broker.stats()

    @property
    def latest(self) -> Sample | None:
        """The latest sample, as it is (None before the first)."""
        return self._sample

    def _take(self, stale: Sample | None) -> Sample:
        """A new sample, unless another caller took one since ``stale`` (while this one
        waited for the lock): then that one."""
        with self._sampling:
            latest = self._sample
            if latest is not stale and latest is not None:
                return latest
            broker = self.app.broker
            stats = broker.stats()
            workers = broker.workers()
            heads = {}
            for s in stats:
                if s.queued:
                    first = broker.entries(JobStatus.QUEUED, s.queue, 1)
                    if first:
                        heads[s.queue] = first[0].at
            self._catch_up()
            now = self.app.clock.time()
            with self._data:
                self._log.trim(now)
                self._backlog.append((now, {s.queue: s.queued + s.scheduled for s in stats}))
                while self._backlog and self._backlog[0][0] < now - WINDOW:
                    self._backlog.popleft()
                seq = latest.seq + 1 if latest is not None else 1
                self._sample = Sample(now, seq, stats, workers, heads)
                return self._sample

    def _catch_up(self) -> None:
        """Copy the events published since the last look (the caller holds ``_sampling``).
        A reader that fell more than ``_MOST_EVENTS`` behind skips to the newest (the
        charts then miss what it skipped)."""
        broker, read = self.app.broker, 0
        self._log.kept = broker.events_kept
        while True:
            page = broker.read_events(self._cursor, 0, _PAGE)
            found = []
            for cursor, data in page:
                try:
                    found.append(_events.decode(data))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.debug("dashboard: skipped event %s, not a Conveyor event", cursor)
            with self._data:
                for event in found:
                    self._log.add(event)
            if page:
                self._cursor = page[-1][0]
            read += len(page)
            if len(page) < _PAGE:
                return
            if read >= _MOST_EVENTS:
                self._cursor = broker.events_tail()
                return

    # -- what the pages read ---------------------------------------------------------------

    def charts(self, now: float) -> dict[str, Any]:
        """Per ``BUCKET`` over the last ``WINDOW``: jobs that succeeded and that failed or
        died (from events), and the backlog (queued + scheduled) of every queue and in all,
        as the last sample in each bucket saw it (None: no sample then)."""
        last = int(now // BUCKET)
        first = last - WINDOW // BUCKET + 1
        size = last - first + 1
        succeeded, failed = [0] * size, [0] * size
        total: list[int | None] = [None] * size
        by_queue: dict[str, list[int | None]] = defaultdict(lambda: [None] * size)
        minute: dict[str, int] = defaultdict(int)
        with self._data:
            for bucket, counts in self._log.done.items():
                if first <= bucket <= last:
                    for queue, (ok, bad) in counts.items():
                        succeeded[bucket - first] += ok
                        failed[bucket - first] += bad
                        if bucket * BUCKET >= now - 60:
                            minute[queue] += ok + bad
            for at, backlog in self._backlog:
                i = int(at // BUCKET) - first
                if 0 <= i < size:
                    total[i] = sum(backlog.values())
                    for queue, n in backlog.items():
                        by_queue[queue][i] = n
            seen = self._log.seen
        return {
            "start": first * BUCKET,
            "step": BUCKET,
            "succeeded": succeeded,
            "failed": failed,
            "backlog": total,
            "backlog_by_queue": dict(by_queue),
            "done_last_minute": dict(minute),
            "events": seen,
        }

    def timeline(self, job_id: str, *, catch_up: bool = True) -> list[Event]:
        """The job's events still in the broker's log, oldest first (read up to now first,
        unless ``catch_up`` is off)."""
        if catch_up:
            with self._sampling:
                self._catch_up()
        with self._data:
            return list(self._log.by_job.get(job_id, ()))

    def dependents(self, job_id: str) -> list[str]:
        """The jobs whose ``job.enqueued`` in the log names this one in ``depends_on``
        (as far back as the log goes; read ``timeline`` first to catch up)."""
        with self._data:
            return list(self._log.dependents.get(job_id, ()))

    def task_of(self, job_id: str) -> str | None:
        """The job's task as its events name it (a succeeded job's payload may be gone)."""
        for event in reversed(self.timeline(job_id, catch_up=False)):
            if event.task:
                return event.task
        return None

    def tasks(self) -> list[str]:
        """The task names the log has seen, for the list page's filter."""
        with self._data:
            return sorted({e.task for e in self._log.events if e.task})
