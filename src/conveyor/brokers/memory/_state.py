"""The memory broker's state: its jobs and the indexes that order them, and the ``Watch``
its blocking calls use. Everything here is read and changed with the broker's condition
held."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self, TypeVar

from ..._message import Envelope, JobStatus, WorkerInfo
from .._base import PARKED, Watch

PENDING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING)


@dataclass
class StoredJob:
    envelope: Envelope
    status: JobStatus
    seq: int
    token: str = ""
    deliveries: int = 0
    lease_until: float = 0.0
    result: bytes | None = None
    expires_at: float | None = None
    cancel_requested: bool = False
    progress: float | None = None
    progress_note: str | None = None
    updated_at: float = 0.0
    reason: str = ""
    settled_by: str = ""  # token of the delivery that finished or released it last
    waiting: int = 0  # dependencies not ended yet; parked (scheduled) while above 0
    dependents: list[str] | None = None  # ids of jobs counting this one among theirs


@dataclass
class State:
    jobs: dict[str, StoredJob] = field(default_factory=dict)
    ready: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    scheduled: list[tuple[float, int, str]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)  # ids last seen running (pruned lazily)
    workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)


def due_at(job: StoredJob) -> float:
    """When a scheduled job comes due; a parked one (promote, dependencies) never does."""
    eta = job.envelope.eta
    return PARKED if job.waiting or eta is None else eta


T = TypeVar("T")


class OnCondition(Watch[T]):
    """A ``Watch`` on a ``threading.Condition``: held from entry to exit but while it sleeps
    (a writer notifies it), so nothing changes between a look and the sleep after it."""

    def __init__(self, cond: threading.Condition, look: Callable[[], T]) -> None:
        self._cond = cond
        self._look = look

    def look(self) -> T:
        return self._look()

    def sleep_then_look(self, seconds: float) -> T:
        self._cond.wait(None if math.isinf(seconds) else seconds)
        return self.look()

    def __enter__(self) -> Self:
        self._cond.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cond.release()
