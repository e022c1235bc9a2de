"""What a drain leaves behind: the queued, running and scheduled jobs of some queues, and when
the next scheduled one comes due.

The broker port counts jobs per status but does not say when a scheduled job comes due, so
the time of the next one is read from the memory broker, the adapter tests run on; for
other brokers it is unknown (None) and a drain on a ``FakeClock`` says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from .._message import JobStatus
from ..brokers._port import PARKED, Broker
from ..brokers.memory import MemoryBroker


@dataclass(frozen=True)
class Left:
    queued: int = 0
    running: int = 0
    scheduled: int = 0  # waiting for a time, or parked (dependencies, workflow steps)
    timed: int | None = None  # of those, how many wait for a time (None: unknown)
    next_eta: float | None = None  # when the first of those is due (None: none, or unknown)

    @property
    def parked(self) -> int | None:
        return None if self.timed is None else self.scheduled - self.timed

    @property
    def empty(self) -> bool:
        return self.queued + self.running + self.scheduled == 0

    def describe(self, now: float) -> str:
        """``2 queued, 1 scheduled (next due ... , 30.0 s ahead)``, for error messages."""
        parts = [f"{self.queued} queued", f"{self.running} running"]
        if self.scheduled:
            when = ""
            if self.next_eta is not None:
                stamp = dt.datetime.fromtimestamp(self.next_eta, dt.UTC).isoformat()
                when = f", the next due {stamp}, {self.next_eta - now:.1f} s from now"
            parked = f", {self.parked} waiting for other jobs to end" if self.parked else ""
            parts.append(f"{self.scheduled} scheduled{when}{parked}")
        else:
            parts.append("0 scheduled")
        return ", ".join(parts)


def left(broker: Broker, queues: Sequence[str]) -> Left:
    wanted = set(queues)
    stats = [s for s in broker.stats() if s.queue in wanted]
    counts = Left(
        queued=sum(s.queued for s in stats),
        running=sum(s.running for s in stats),
        scheduled=sum(s.scheduled for s in stats),
    )
    if not isinstance(broker, MemoryBroker):
        return counts
    etas = _memory_etas(broker, wanted)
    return Left(
        counts.queued,
        counts.running,
        counts.scheduled,
        timed=len(etas),
        next_eta=min(etas, default=None),
    )


def _memory_etas(broker: MemoryBroker, queues: set[str]) -> list[float]:
    """The etas of the memory broker's scheduled jobs in ``queues``, parked ones left out.

    Its schedule is a heap that may hold stale entries (a job cancelled, or placed again
    since), so an entry counts only while it is the job's current one, as in the broker."""
    with broker._cond:
        state = broker._s
        found = []
        for eta, seq, job_id in state.scheduled:
            job = state.jobs.get(job_id)
            if (
                job is not None
                and job.status is JobStatus.SCHEDULED
                and job.seq == seq
                and eta != PARKED
                and job.envelope.queue in queues
            ):
                found.append(eta)
        return found
