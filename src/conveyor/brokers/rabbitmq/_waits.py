"""Jobs waiting for their dependencies: who publishes their tickets when they are released.

A job enqueued with ``depends_on`` is parked in the record store until its last dependency
ends; the store releases it (``queued``) in the very step that ends the dependency (a
finish, a cancel, a purge, a delete) and tells nobody. So that the released job gets a
ticket then, not at a sweep of a worker that serves its queue, its enqueue notes it under
a key of each of its dependencies in the store's key-value space (``KEY`` + the queues'
prefix + ``:`` + the dependency's id: the ids of the jobs waiting for it), and the
dependency's id in the index (``KEY`` + the prefix: the dependencies that have such a
key), *before* the record is written (a dependency that ends in between finds the note:
no lost release).

Whatever may end a dependency reads what waits for it afterwards: the end of one job reads
that job's key alone (one read, nothing more while nothing waits for it); the end of
several reads the index (the dependencies' ids, not what waits for them), then the keys of
those of them that are in it; a purge (it does not say which jobs it ended) reads the keys
of every dependency in the index. The waiting jobs are looked up (one read), the tickets
of those now queued returned, and the notes settled (the job no longer parked, or its
dependency ended) removed, a key with nothing left with its entry in the index. An enqueue
whose job was queued at once (its dependencies had ended) removes the notes it wrote.

The notes are a hint, never the truth: one missing (the index full at ``KEPT``
dependencies, or a key at ``KEPT`` jobs; a write that conflicted too often) leaves the job
to the sweep, a stale one costs a lookup. When the index is full, the dependencies that
have ended (a cancelled job that ended on its lease's expiry) are pruned first.

Versions before the index noted ``(dependency, job)`` pairs under one key (``OLD_KEY``):
the first wake in a process moves them under the keys (``Waits._upgrade``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Collection, Iterable

import msgspec

from ..._errors import TransactionConflict
from ..._message import Envelope, JobStatus
from .._port import Broker

log = logging.getLogger("conveyor")

KEPT = 2000  # dependencies the index holds at most, and jobs one dependency's key holds
KEY = "conveyor:rabbitmq:deps:"  # + the queues' prefix (the index); + ":" + a dependency
OLD_KEY = "conveyor:rabbitmq:waiting:"  # + the prefix: the pairs of versions before the index

Pair = tuple[str, str]  # (dependency id, waiting job id)
_decode = msgspec.json.Decoder(list[str]).decode
_decode_pairs = msgspec.json.Decoder(list[tuple[str, str]]).decode
_encode = msgspec.json.encode


class Waits:
    """The waiting jobs of one set of queues (``prefix``) in ``store``'s key-value space."""

    def __init__(self, store: Broker, prefix: str) -> None:
        self._store = store
        self._index = KEY + prefix
        self._old: str | None = OLD_KEY + prefix  # None once read (``_upgrade``)

    def _key(self, dependency: str) -> str:
        return f"{self._index}:{dependency}"

    def note(self, envelopes: Iterable[Envelope]) -> None:
        """Before the records are written: the jobs with dependencies, under each one."""
        waiting: dict[str, list[str]] = {}
        for env in envelopes:
            for dep in env.depends_on:
                waiting.setdefault(dep, []).append(env.id)
        if waiting:
            self._note(waiting)

    def _note(self, waiting: dict[str, list[str]]) -> None:
        """The jobs waiting for each dependency, under its key and the index."""
        kv = self._store.kv
        raw = kv.get(self._index)
        known = _decode(raw) if raw else []
        listed = set(known)
        fresh = [d for d in waiting if d not in listed]
        stale = self._ended(known) if len(known) + len(fresh) > KEPT else set()

        def index(old: bytes | None) -> bytes | None:
            kept = [d for d in (_decode(old) if old else []) if d not in stale]
            there = set(kept)
            kept += [d for d in waiting if d not in there]
            return _encode(kept[:KEPT])  # past it, the sweep finds the newest ones

        try:
            if fresh or stale:
                listed = set(_decode(kv.update(self._index, index) or b"[]"))
            for dep in stale:
                kv.delete(self._key(dep))
            for dep, jobs in waiting.items():
                # only under a dependency in the index: a key out of it would never go
                if dep in listed and not kv.set(self._key(dep), _encode(jobs[:KEPT]), nx=True):
                    kv.update(self._key(dep), functools.partial(_add, jobs=jobs))
        except TransactionConflict:
            log.warning(
                "too many enqueues with depends_on at once: their release waits for a sweep"
            )

    def forget(self, envelopes: Iterable[Envelope]) -> None:
        """After the records are written: the notes of jobs that wait no more (queued at
        their enqueue, or not written) are removed."""
        self._drop([(dep, env.id) for env in envelopes for dep in env.depends_on])

    def wake(self, candidates: Collection[str] | None, *, ended: bool) -> list[tuple[str, str]]:
        """``(queue, id)`` tickets for the jobs that waited for ``candidates`` (None: for any
        job) and are queued now; the notes settled are removed. ``ended``: the candidates
        have ended (their notes go even where the job waits for others still)."""
        if self._old is not None:
            self._upgrade()
        kv = self._store.kv
        if candidates is not None and len(candidates) == 1:
            deps = list(candidates)  # its own key alone: no read of the index
        else:
            raw = kv.get(self._index)
            if raw is None:
                return []
            listed = _decode(raw)
            deps = listed if candidates is None else [d for d in listed if d in candidates]
        hits: list[Pair] = []
        for dep in deps:
            raw = kv.get(self._key(dep))
            hits += [(dep, job) for job in (_decode(raw) if raw else [])]
        if not hits:
            return []
        waiting = list(dict.fromkeys(job for _, job in hits))
        with self._store._errors:
            records = self._store._get(waiting)
        found = {r.id: r for r in records if r is not None}
        tickets = [(r.queue, r.id) for r in found.values() if r.status is JobStatus.QUEUED]
        # Parked, or not written yet (its enqueue notes it first): it still waits.
        parked = {j for j in waiting if j not in found or found[j].status is JobStatus.SCHEDULED}
        self._drop([p for p in hits if ended or p[1] not in parked])
        return tickets

    def _upgrade(self) -> None:
        """Once in a process, before its first wake: the pairs an earlier version noted
        under its one key (``OLD_KEY``) are noted again under their dependencies' keys, and
        that key removed, so that jobs enqueued before an upgrade are released after it as
        promptly (one read more per process; pairs an earlier version's producer notes
        later are left to the sweep)."""
        assert self._old is not None
        raw = self._store.kv.get(self._old)
        if raw:
            waiting: dict[str, list[str]] = {}
            for dep, job in _decode_pairs(raw):
                waiting.setdefault(dep, []).append(job)
            self._note(waiting)
            self._store.kv.delete(self._old)
        self._old = None

    def _drop(self, settled: Iterable[Pair]) -> None:
        by_dep: dict[str, set[str]] = {}
        for dep, job in settled:
            by_dep.setdefault(dep, set()).add(job)
        emptied: set[str] = set()
        with contextlib.suppress(TransactionConflict):  # a stale note costs a lookup, no more
            for dep, jobs in by_dep.items():
                if not self._store.kv.update(self._key(dep), functools.partial(_remove, gone=jobs)):
                    emptied.add(dep)
            if emptied:
                self._store.kv.update(self._index, functools.partial(_remove, gone=emptied))

    def _ended(self, deps: list[str]) -> set[str]:
        """The dependencies that have ended or are gone: their waiting jobs were released
        then (or wait for the sweep)."""
        with self._store._errors:
            records = self._store._get(deps)
        return {d for d, r in zip(deps, records, strict=True) if r is None or r.status.terminal}


def _add(old: bytes | None, jobs: list[str]) -> bytes:
    kept = _decode(old) if old else []
    there = set(kept)
    return _encode((kept + [j for j in jobs if j not in there])[:KEPT])


def _remove(old: bytes | None, gone: Collection[str]) -> bytes | None:
    kept = [i for i in (_decode(old) if old else []) if i not in gone]
    return _encode(kept) if kept else None
