"""Jobs waiting for their dependencies: who publishes their tickets when they are released.

A job enqueued with ``depends_on`` is parked in the record store until its last dependency
ends; the store releases it (``queued``) in the very step that ends the dependency (a
finish, a cancel, a purge, a delete) and tells nobody. So that the released job gets a
ticket then, not at a sweep of a worker that serves its queue, its enqueue notes
``(dependency, job)`` pairs under one key of the store's key-value space, *before* the
record is written (a dependency that ends in between finds the pair: no lost release).
Whatever may end a dependency reads that key afterwards: one read per call, nothing more
while no job waits; for the dependencies it ended it looks the waiting jobs up (one read),
returns tickets for those now queued, and removes the pairs that are settled (the job no
longer parked, or its dependency ended).

The key is a hint, never the truth: a pair missing (the key full at ``KEPT`` pairs, a
write that conflicted too often) leaves the job to the sweep, a stale pair costs a lookup.
When the key is full, pairs whose job is no longer parked or whose dependency has ended
(a cancelled job that ended on its lease's expiry) are pruned first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterable, Sequence

import msgspec

from ..._errors import TransactionConflict
from ..._message import Envelope, JobStatus
from .._port import Broker

log = logging.getLogger("conveyor")

KEPT = 2000  # pairs the key holds at most (each wake reads them all)
KEY = "conveyor:rabbitmq:waiting:"  # + the queues' prefix

Pair = tuple[str, str]  # (dependency id, waiting job id)
_decode = msgspec.json.Decoder(list[tuple[str, str]]).decode
_encode = msgspec.json.encode


class Waits:
    """The waiting pairs of one set of queues (``prefix``) in ``store``'s key-value space."""

    def __init__(self, store: Broker, prefix: str) -> None:
        self._store = store
        self._key = KEY + prefix

    def note(self, envelopes: Iterable[Envelope]) -> None:
        """Before the records are written: the pairs of jobs with dependencies."""
        pairs = [(dep, env.id) for env in envelopes for dep in env.depends_on]
        if not pairs:
            return
        kv = self._store.kv
        raw = kv.get(self._key)
        known = _decode(raw) if raw else []
        stale = self._stale(known) if len(known) + len(pairs) > KEPT else set()

        def add(old: bytes | None) -> bytes | None:
            kept = [p for p in (_decode(old) if old else []) if p not in stale]
            fresh = set(kept)
            kept += [p for p in pairs if p not in fresh]
            return _encode(kept[:KEPT])  # past it, the sweep finds the newest ones

        try:
            kv.update(self._key, add)
        except TransactionConflict:
            log.warning(
                "too many enqueues with depends_on at once: their release waits for a sweep"
            )

    def wake(self, candidates: Collection[str] | None, *, ended: bool) -> list[tuple[str, str]]:
        """``(queue, id)`` tickets for the jobs that waited for ``candidates`` (None: for any
        job) and are queued now; the pairs settled are removed. ``ended``: the candidates
        have ended (their pairs go even where the job waits for others still)."""
        kv = self._store.kv
        raw = kv.get(self._key)
        if raw is None:
            return []
        pairs = _decode(raw)
        hits = pairs if candidates is None else [p for p in pairs if p[0] in candidates]
        if not hits:
            return []
        waiting = list(dict.fromkeys(job for _, job in hits))
        with self._store._errors:
            records = self._store._get(waiting)
        found = {r.id: r for r in records if r is not None}
        tickets = [(r.queue, r.id) for r in found.values() if r.status is JobStatus.QUEUED]
        # Parked, or not written yet (its enqueue notes the pairs first): it still waits.
        parked = {j for j in waiting if j not in found or found[j].status is JobStatus.SCHEDULED}
        settled = {p for p in hits if ended or p[1] not in parked}
        settled |= {p for p in pairs if p[1] in found and p[1] not in parked}
        self._drop(settled)
        return tickets

    def _drop(self, settled: Collection[Pair]) -> None:
        if not settled:
            return

        def remove(old: bytes | None) -> bytes | None:
            kept = [p for p in (_decode(old) if old else []) if p not in settled]
            return _encode(kept) if kept else None

        with contextlib.suppress(TransactionConflict):  # a stale pair costs a lookup, no more
            self._store.kv.update(self._key, remove)

    def _stale(self, pairs: Sequence[Pair]) -> set[Pair]:
        """The pairs whose job is no longer parked or whose dependency has ended."""
        ids = list(dict.fromkeys(i for p in pairs for i in p))
        with self._store._errors:
            records = dict(zip(ids, self._store._get(ids), strict=True))

        def settled(pair: Pair) -> bool:
            dep, job = records[pair[0]], records[pair[1]]
            return (
                job is None
                or job.status is not JobStatus.SCHEDULED
                or dep is None
                or dep.status.terminal
            )

        return {p for p in pairs if settled(p)}
